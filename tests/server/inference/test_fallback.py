"""Fallback before the first token, against a FAKE vLLM (fake_vllm.py): when the first
candidate fails before anything reached the client (engine 500, connection refused, a stream
broken before its first event), the next candidate serves and the client sees a plain 200."""

from __future__ import annotations

import httpx
import pytest

from tests.server.inference.conftest import settled
from tests.server.inference.fake_vllm import BASE, VARIANT, FakeVllm

# mode -> (the failed attempt's requests-counter status for JSON, for streams; fallback reason)
FAILURES = {
    "error": (500, 502, "engine_error"),
    "refused": (503, 503, "unreachable"),
    "empty": (None, 502, "engine_error"),
}


def chat(stream: bool) -> dict:
    return {"model": BASE, "messages": [{"role": "user", "content": "hi"}], "stream": stream}


CASES = [
    ("error", False), ("error", True), ("refused", False), ("refused", True),
    ("empty", True),  # only a stream can break before its first event
]  # fmt: skip


@pytest.mark.parametrize(("mode", "stream"), CASES)
async def test_the_next_candidate_serves_when_the_first_fails_before_its_first_token(
    serve, mode, stream
):
    json_status, stream_status, why = FAILURES[mode]
    failing, good = FakeVllm(mode=mode), FakeVllm()
    with serve({BASE: failing, VARIANT: good}) as (url, h):
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            response = await client.post("/v1/chat/completions", json=chat(stream))
        assert response.status_code == 200, response.text
        assert response.headers["x-leanserve-variant"] == VARIANT
        if stream:
            assert response.text.endswith("data: [DONE]\n\n")
            assert '"usage"' not in response.text  # the client did not ask for it
        else:
            assert response.json()["choices"][0]["message"]["content"] == "hi"
        assert failing.calls and good.calls, "both engines were asked"
        await settled(h)
        assert h.requests(BASE, stream_status if stream else json_status) == 1
        assert h.requests(VARIANT, 200) == 1
        assert h.sample("leanserve_fallbacks_total", variant=BASE, reason=why) == 1
        decision = {"policy": "quality", "variant": VARIANT, "reason": "fallback"}
        assert h.sample("leanserve_routing_decisions_total", **decision) == 1
        assert h.backend(BASE).breaker.consecutive == 1
        assert h.backend(VARIANT).breaker.consecutive == 0


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_when_every_candidate_fails_the_client_gets_the_last_error(serve, stream):
    with serve({BASE: FakeVllm(mode="refused"), VARIANT: FakeVllm(mode="error")}) as (url, h):
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            response = await client.post("/v1/chat/completions", json=chat(stream))
        assert response.status_code == 502
        error = response.json()["error"]
        assert error["code"] == "engine_error" and "fake engine failure" in error["message"]
        await settled(h)
        assert h.requests(VARIANT, 502 if stream else 500) == 1


async def test_an_engines_4xx_is_the_answer_not_a_reason_to_fall_back(serve):
    """A request the engine refuses would be refused by every candidate: no fallback."""
    bad, good = FakeVllm(), FakeVllm()

    async def refuse(request: httpx.Request) -> httpx.Response:
        bad.calls.append(request.url.path)
        body = {"error": {"message": "This model's maximum context length is 10", "param": "x"}}
        return httpx.Response(400, json=body)

    bad.handle = refuse  # the instance's transport calls this one
    with serve({BASE: bad, VARIANT: good}) as (url, h):
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            response = await client.post("/v1/chat/completions", json=chat(False))
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "context_length_exceeded"
        assert not good.calls
        await settled(h)
        assert h.requests(BASE, 400) == 1
        assert h.backend(BASE).breaker.consecutive == 0
