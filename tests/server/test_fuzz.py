"""Fuzzing with schemathesis against the gateway's own OpenAPI schema, with a real engine
behind it: whatever the input, no 5xx and no response that breaks the schema."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.server.gateway import start_gateway

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fuzz_gateway(home, tmp_path_factory):
    # Small generation caps keep each fuzzed request short: a fuzzer that finds max_tokens=2000
    # is answered with a 400 instead of a minute of generation.
    env = {
        "LEANSERVE_VARIANTS": "[]",
        "LEANSERVE_LIMITS__MAX_TOKENS": "8",
        "LEANSERVE_MAX_N": "2",
        "LEANSERVE_AUTH__ADMIN_KEY": "fuzz-admin",
    }
    gw = start_gateway(home, tmp_path_factory.mktemp("fuzz") / "gateway.log", extra_env=env)
    try:
        gw.wait_ready()
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def api_schema(fuzz_gateway):
    return schemathesis.openapi.from_url(f"{fuzz_gateway.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_schema_conformance(case):
    response = case.call(timeout=120)
    assert response.status_code < 500, response.text
    case.validate_response(response)
