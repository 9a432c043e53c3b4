"""A sampled request through the gateway's real inference routes (over a FAKE vLLM,
tests/server/inference/fake_vllm.py, a test double): the client gets the same bytes as an
unsampled one, and the answer reaches the scoring queue with the variant that served it."""

from __future__ import annotations

import random

import httpx
import pytest

from server.quality.capture import answer_text
from server.quality.settings import QualitySettings
from server.quality.shadow import Shadow
from tests.server.inference.conftest import settled
from tests.server.inference.fake_vllm import BASE, VARIANT, FakeVllm


def chat(stream: bool, model: str = BASE) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    return body


async def post(url: str, body: dict) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        return await client.post("/v1/chat/completions", json=body)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_sampled_answer_is_sent_unchanged_and_queued(serve, stream):
    engines = {BASE: FakeVllm(), VARIANT: FakeVllm()}
    with serve(engines) as (url, h):
        unsampled = await post(url, chat(stream))
        h.state.shadow = Shadow(
            QualitySettings(shadow_rate=1.0), h.state.registry, h.state.metrics, random.Random(1)
        )  # not started: the queue keeps what it is given
        sampled = await post(url, chat(stream))
        pinned = await post(url, chat(stream, VARIANT))
        await settled(h)
    assert sampled.status_code == unsampled.status_code == pinned.status_code == 200
    assert sampled.content == unsampled.content, "sampling changes nothing the client gets"
    assert dict(sampled.headers).keys() == dict(unsampled.headers).keys()
    queue = h.state.shadow.queue
    assert queue.qsize() == 2
    first, second = queue.get_nowait(), queue.get_nowait()
    assert (first.served, second.served) == (BASE, VARIANT)
    assert answer_text(first) == ("t0t1t2" if stream else "hi")
    assert b"".join(first.chunks) == sampled.content, "the copy is what the client got"


async def test_rate_zero_copies_nothing(serve):
    with serve({BASE: FakeVllm(), VARIANT: FakeVllm()}) as (url, h):
        h.state.shadow = Shadow(QualitySettings(shadow_rate=0.0), h.state.registry, h.state.metrics)
        assert (await post(url, chat(True))).status_code == 200
        await settled(h)
    assert h.state.shadow.queue.qsize() == 0


async def test_a_sampled_stream_whose_client_leaves_is_still_closed_and_counted_once(serve):
    fake = FakeVllm(mode="hang")  # one token, then nothing until the client leaves
    with serve({BASE: fake, VARIANT: FakeVllm()}) as (url, h):
        h.state.shadow = Shadow(QualitySettings(shadow_rate=1.0), h.state.registry, h.state.metrics)
        async with (
            httpx.AsyncClient(base_url=url, timeout=10) as client,
            client.stream("POST", "/v1/chat/completions", json=chat(True)) as r,
        ):
            assert b'"content":"t0"' in await anext(r.aiter_bytes())
        await settled(h)  # the copy in between closes the relay as before: the lease finished
        assert fake.closed == 1, "the engine's stream is closed: vLLM stops generating"
        assert h.requests(BASE, 499) == 1
    queue = h.state.shadow.queue
    assert queue.empty() or answer_text(queue.get_nowait()) is None, "an unfinished answer"
