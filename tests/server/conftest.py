from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.server.gateway import REPO, Gateway, start_gateway

# One store for all test runs: the default model is converted once and reused (checksummed).
HOME = Path(os.environ.get("LEANSERVE_HOME", REPO / ".leanserve"))
BASE = "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def home() -> Path:
    HOME.mkdir(parents=True, exist_ok=True)
    return HOME


@pytest.fixture(scope="session")
def gateway(home: Path, tmp_path_factory) -> Gateway:
    """The real gateway with the real default model on a real vLLM engine, for the session."""
    # No variants here: these tests are about the gateway and the base engine.
    gw = start_gateway(
        home,
        tmp_path_factory.mktemp("gateway") / "gateway.log",
        extra_env={"LEANSERVE_VARIANTS": "[]"},
    )
    try:
        gw.wait_ready()
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def base_model() -> str:
    return BASE
