"""limits.max_tokens with the real engine (issue 12, item 2): what vLLM generates, not only what
the gateway checks. A request that asks for no max_tokens, or asks through the field an endpoint
ignores, must not generate beyond the cap."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.server.gateway import start_gateway

pytestmark = pytest.mark.slow

BASE = "smollm2-135m-instruct"
CAP = 8
MESSAGES = [{"role": "user", "content": "Tell me a long story about the sea."}]


@pytest.fixture(scope="module")
def capped(home, tmp_path_factory):
    env = {"LEANSERVE_VARIANTS": "[]", "LEANSERVE_LIMITS__MAX_TOKENS": str(CAP)}
    gw = start_gateway(home, tmp_path_factory.mktemp("capped") / "gateway.log", extra_env=env)
    try:
        gw.wait_ready()
        yield gw
    finally:
        gw.stop()


def test_chat_without_max_tokens_generates_only_the_cap(capped):
    body = {"model": BASE, "messages": MESSAGES, "ignore_eos": True}
    r = httpx.post(f"{capped.url}/v1/chat/completions", json=body, timeout=600)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == CAP
    assert r.json()["choices"][0]["finish_reason"] == "length"


def test_stream_without_max_tokens_generates_only_the_cap(capped):
    body = {
        "model": BASE,
        "messages": MESSAGES,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    usage = None
    with httpx.stream("POST", f"{capped.url}/v1/chat/completions", json=body, timeout=600) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {") and '"usage":{' in line:
                usage = json.loads(line[6:])["usage"]
    assert usage is not None and usage["completion_tokens"] == CAP


def test_completions_cannot_raise_the_cap_through_max_completion_tokens(capped):
    body = {
        "model": BASE,
        "prompt": "Once upon a time",
        "max_completion_tokens": 1,
        "max_tokens": 64,
        "ignore_eos": True,
    }
    r = httpx.post(f"{capped.url}/v1/completions", json=body, timeout=600)
    assert r.status_code == 400, f"{r.status_code}: {r.text[:300]}"
    assert r.json()["error"]["param"] in ("max_completion_tokens", "max_tokens")
