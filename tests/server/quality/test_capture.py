"""What a sampled request leaves for scoring: the answer's bytes exactly as sent, read back into
choice 0's text only when it finished."""

from __future__ import annotations

import json

import pytest

from server.inference.protocol import ChatCompletionRequest, CompletionRequest
from server.quality.capture import Answer, Tee, answer_text, scorable
from tests.server.inference.fake_vllm import FakeVllm, sse

CHAT = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}])


def completion(**fields) -> CompletionRequest:
    return CompletionRequest(model="m", **fields)


def test_which_requests_can_be_scored():
    assert scorable(CHAT)
    assert scorable(completion(prompt="Once upon"))
    assert scorable(completion(prompt=[1, 2, 3]))
    assert not scorable(completion(prompt=["a", "b"])), "several prompts"
    assert not scorable(completion(prompt=[[1, 2], [3]]))
    assert not scorable(completion(prompt="x", echo=True)), "the text holds the prompt too"


def test_a_whole_answer():
    body = json.dumps(FakeVllm().answer("m")).encode()
    assert answer_text(Answer(CHAT, chunks=[body])) == "hi"
    text = {"choices": [{"index": 0, "text": " there", "finish_reason": "length"}]}
    assert answer_text(Answer(completion(prompt="x"), chunks=[json.dumps(text).encode()])) == (
        " there"
    )
    assert answer_text(Answer(CHAT, chunks=[b"not json"])) is None


def cut(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("size", [1, 7, 10_000])
def test_a_stream_cut_anywhere(size):
    data = b"".join(FakeVllm(tokens=3).events("m"))  # t0 t1 t2, finish "length", usage, [DONE]
    assert answer_text(Answer(CHAT, stream=True, chunks=cut(data, size))) == "t0t1t2"


def test_only_choice_zero_and_only_a_finished_stream():
    def delta(index: int, text: str, finish: str | None = None) -> bytes:
        choice = {"index": index, "delta": {"content": text}, "finish_reason": finish}
        return sse({"choices": [choice]})

    two = [delta(0, "a"), delta(1, "X"), delta(0, "b", "stop"), delta(1, "Y", "stop")]
    assert answer_text(Answer(CHAT, stream=True, chunks=two)) == "ab"
    gone = [delta(0, "a"), delta(0, "b")]  # the client left before the end
    assert answer_text(Answer(CHAT, stream=True, chunks=gone)) is None
    broken = [delta(0, "a"), sse({"error": {"message": "engine failed"}}), b"data: [DONE]\n\n"]
    assert answer_text(Answer(CHAT, stream=True, chunks=broken)) is None
    texts = [sse({"choices": [{"index": 0, "text": "x", "finish_reason": "stop"}]})]
    assert answer_text(Answer(completion(prompt="p"), stream=True, chunks=texts)) == "x"


async def test_the_tee_passes_every_chunk_on_unchanged_and_closes_what_it_wraps():
    closed = []

    async def relay():
        try:
            for chunk in (b"data: 1\n\n", b"data: 2\n\n"):
                yield chunk
        finally:
            closed.append(True)

    copy: list[bytes] = []
    got = [chunk async for chunk in Tee(relay(), copy)]
    assert got == copy == [b"data: 1\n\n", b"data: 2\n\n"]
    # A client that leaves after the first chunk: closing the tee runs the relay's `finally`.
    closed.clear()
    tee = Tee(relay(), [])
    assert await anext(tee) == b"data: 1\n\n" and not closed
    await tee.aclose()
    assert closed == [True]
