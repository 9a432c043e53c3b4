"""A real local vLLM engine refuses a call that does not come through the gateway (no key, or a
wrong one: 401), while the gateway, which holds its key, serves the same request; the gateway's
other calls to the engine (/tokenize for the context check, /metrics for its series) work too."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.server.gateway import engine_headers

pytestmark = pytest.mark.slow


def _body(model: str, **more) -> dict:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Say hi."}],
        "max_tokens": 4,
        **more,
    }


def test_the_engine_refuses_callers_without_its_key(gateway, base_model):
    engine = gateway.engine(base_model)
    url = f"{engine['url']}/v1/chat/completions"
    assert httpx.post(url, json=_body(base_model), timeout=60).status_code == 401
    wrong = {"Authorization": "Bearer not-the-key"}
    assert httpx.post(url, json=_body(base_model), headers=wrong, timeout=60).status_code == 401
    assert httpx.get(f"{engine['url']}/v1/models", timeout=60).status_code == 401
    # The key is what makes the difference: with it, the engine answers.
    with_key = httpx.post(url, json=_body(base_model), headers=engine_headers(engine), timeout=60)
    assert with_key.status_code == 200


def test_the_gateway_serves_what_the_engine_refuses_directly(gateway, base_model):
    r = httpx.post(f"{gateway.url}/v1/chat/completions", json=_body(base_model), timeout=120)
    assert r.status_code == 200, r.text
    streamed = httpx.post(
        f"{gateway.url}/v1/chat/completions", json=_body(base_model, stream=True), timeout=120
    )
    assert streamed.status_code == 200 and b"[DONE]" in streamed.content
    # max_tokens close to the 2048-token window: the context check asks the engine's /tokenize.
    near = _body(base_model, max_tokens=2000, stop=["."])
    r = httpx.post(f"{gateway.url}/v1/chat/completions", json=near, timeout=300)
    assert r.status_code == 200, r.text


def test_the_engines_series_reach_the_gateways_metrics(gateway, base_model):
    """The gateway fetches the engine's own /metrics (with its key) in the background: while a
    long stream runs, the gateway reports the engine's running request."""
    body = _body(base_model, max_tokens=1000, ignore_eos=True, stream=True)
    sample = f'leanserve_engine_running_requests{{variant="{base_model}"}} 1.0'
    seen = False
    with httpx.stream(
        "POST", f"{gateway.url}/v1/chat/completions", json=body, timeout=300
    ) as stream:
        assert stream.status_code == 200
        deadline = time.monotonic() + 30  # collected every metrics_refresh_s (5 s)
        while not seen and time.monotonic() < deadline:
            seen = sample in httpx.get(f"{gateway.url}/metrics", timeout=30).text
            time.sleep(0.5)
    assert seen, "the engine's running request never showed in the gateway's /metrics"
