"""The relay's pure functions: SSE framing across chunk boundaries, the usage event the client
did not ask for, the finish reason, and the error events (the engine's, relayed as they are;
the gateway's own when the engine breaks mid-stream)."""

from __future__ import annotations

import json

import pytest

from server.inference.relay import (
    DONE,
    broken_stream,
    for_client,
    parse_event,
    split_events,
)
from tests.server.inference.fake_vllm import FakeVllm

EVENTS = FakeVllm(tokens=3).events("m")  # 3 tokens, the usage-only event, [DONE]
STREAM = b"".join(EVENTS)


def frame(chunks: list[bytes]) -> list[bytes]:
    """What the relay does with chunks as they arrive: whole events out, the rest kept."""
    out, pending = [], b""
    for chunk in chunks:
        events, pending = split_events(pending + chunk)
        out += events
    assert pending == b"", "nothing may be left once the stream is whole"
    return out


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, len(STREAM)])
def test_events_come_out_whole_however_the_chunks_cut_them(size):
    chunks = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
    assert frame(chunks) == EVENTS


def test_a_cut_between_the_two_newlines_of_an_event_end():
    first = EVENTS[0]
    events, rest = split_events(first[:-1])
    assert events == [] and rest == first[:-1]
    events, rest = split_events(rest + first[-1:] + EVENTS[1][:5])
    assert events == [first] and rest == EVENTS[1][:5]


def test_tokens_finish_reason_and_usage_are_read():
    parsed = [parse_event(raw) for raw in EVENTS]
    assert [e.token for e in parsed] == [True, True, True, False, False]
    assert [e.finish_reason for e in parsed] == [None, None, "length", None, None]
    assert parsed[3].usage == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    assert parsed[3].usage_only and not any(e.usage_only for e in parsed[:3] + parsed[4:])


def test_the_usage_event_goes_to_the_client_only_when_it_asked():
    parsed = [parse_event(raw) for raw in EVENTS]
    assert for_client(parsed, wants_usage=True) == STREAM
    without = for_client(parsed, wants_usage=False)
    assert without == b"".join(EVENTS[:3] + EVENTS[4:])
    assert b'"usage"' not in without and without.endswith(DONE)


def test_usage_on_a_chunk_with_choices_is_kept():
    """vLLM's continuous usage stats put usage on token chunks: those are tokens, never
    dropped."""
    chunk = {"choices": [{"index": 0, "delta": {"content": "x"}}], "usage": {"total_tokens": 1}}
    raw = f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n".encode()
    event = parse_event(raw)
    assert event.token and not event.usage_only and event.usage == {"total_tokens": 1}
    assert for_client([event], wants_usage=False) == raw


def test_an_engines_error_event_passes_through_unchanged():
    raw = b'data: {"error":{"message":"boom","type":"InternalServerError","code":500}}\n\n'
    event = parse_event(raw)
    assert not event.token and event.usage is None and event.finish_reason is None
    assert for_client([event], wants_usage=False) == raw


def test_a_broken_stream_ends_with_an_openai_error_event_and_done():
    events, rest = split_events(broken_stream("m:v"))
    assert rest == b"" and events[-1] == DONE
    error = json.loads(events[0][len(b"data: ") :])["error"]
    assert error["code"] == "engine_error" and error["type"] == "server_error"
    assert "m:v" in error["message"]
