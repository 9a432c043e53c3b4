"""Per-request accounting, against a FAKE vLLM (fake_vllm.py): however a request ends (success,
engine error, client gone, engine dead mid-stream) the backend's in-flight count, its gauge,
the stream slot and the wait for a first token all return to zero, and the request is counted
once. The gauge counts a stream from the moment it is sent, not only from its first token."""

from __future__ import annotations

import asyncio
import json
import threading

import httpx
import pytest

from tests.server.inference.conftest import settled
from tests.server.inference.fake_vllm import BASE, FakeVllm


def chat(stream: bool, **more) -> dict:
    body = {"model": BASE, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    return {**body, **more}


def total_requests(h) -> float:
    return sum(
        h.sample("leanserve_requests_total", variant=BASE, route="chat", status=str(status))
        for status in (200, 400, 499, 500, 502, 503, 504)
    )


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_success(serve, stream):
    fake = FakeVllm()
    with serve({BASE: fake}) as (url, h):
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            response = await client.post(
                "/v1/chat/completions", json=chat(stream, stream_options={"include_usage": True})
            )
        assert response.status_code == 200
        if stream:
            data = [line for line in response.text.split("\n\n") if line]
            assert len(data) == 5, "3 tokens, the usage event (asked for) and [DONE]"
            assert json.loads(data[3][len("data: ") :])["usage"]["completion_tokens"] == 3
            assert fake.closed == 1
        await settled(h)
        assert h.requests(BASE, 200) == 1 and total_requests(h) == 1
        tokens = h.sample("leanserve_generation_tokens_total", variant=BASE)
        assert tokens == (3 if stream else 2), "usage is counted once, from the engine"
        assert h.backend(BASE).breaker.consecutive == 0


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_engine_error(serve, stream):
    with serve({BASE: FakeVllm(mode="error")}) as (url, h):
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            response = await client.post("/v1/chat/completions", json=chat(stream))
        assert response.status_code == 502
        await settled(h)
        assert total_requests(h) == 1
        assert h.backend(BASE).breaker.consecutive == 1


async def test_client_disconnect_mid_stream(serve):
    fake = FakeVllm(mode="hang")  # one token, then nothing until the client leaves
    with serve({BASE: fake}) as (url, h):
        async with (
            httpx.AsyncClient(base_url=url, timeout=10) as client,
            client.stream("POST", "/v1/chat/completions", json=chat(True)) as r,
        ):
            assert r.status_code == 200
            first = await anext(r.aiter_bytes())
            assert b'"content":"t0"' in first
        await settled(h)  # the client closed its connection on leaving the block
        assert h.requests(BASE, 499) == 1 and total_requests(h) == 1
        assert fake.closed == 1, "the engine's stream is closed: vLLM stops generating"
        assert h.backend(BASE).breaker.consecutive == 0, "a client leaving is not a failure"


async def test_client_disconnect_while_waiting_for_a_whole_answer(serve):
    with serve({BASE: FakeVllm(mode="hang")}) as (url, h):
        async with httpx.AsyncClient(base_url=url, timeout=0.3) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.post("/v1/chat/completions", json=chat(False))
        await settled(h)
        assert h.requests(BASE, 499) == 1 and total_requests(h) == 1


async def test_engine_death_mid_stream(serve):
    with serve({BASE: FakeVllm(mode="break")}) as (url, h):
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            response = await client.post("/v1/chat/completions", json=chat(True))
        assert response.status_code == 200  # the headers went out with the first token
        events = [e for e in response.text.split("\n\n") if e]
        assert '"content":"t0"' in events[0]
        assert json.loads(events[1][len("data: ") :])["error"]["code"] == "engine_error"
        assert events[2] == "data: [DONE]"
        await settled(h)
        assert h.requests(BASE, 502) == 1 and total_requests(h) == 1
        assert h.backend(BASE).breaker.consecutive == 1


async def test_a_stream_waiting_for_its_first_token_is_in_flight(serve):
    gate = threading.Event()
    with serve({BASE: FakeVllm(gate=gate)}, limits={"max_concurrent_streams": 1}) as (url, h):
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            waiting = asyncio.create_task(client.post("/v1/chat/completions", json=chat(True)))
            for _ in range(250):
                if h.backend(BASE).in_flight:
                    break
                await asyncio.sleep(0.02)
            counts = h.open_counts()
            assert counts == {
                "open_streams": 1,
                f"{BASE} in_flight": 1,
                f"{BASE} gauge": 1,
                f"{BASE} waiting": 1,
            }
            # Its slot is taken: a second stream is refused while the first still waits.
            second = await client.post("/v1/chat/completions", json=chat(True))
            assert second.status_code == 429
            assert second.json()["error"]["code"] == "too_many_streams"
            gate.set()
            assert (await waiting).status_code == 200
        await settled(h)
        assert h.requests(BASE, 200) == 1 and total_requests(h) == 1
