"""Relay an engine's SSE stream to the client: framing and parsing as pure functions (bytes in,
events out), and the thin async relay that uses them.

The engine's bytes pass through as they come, cut only at event boundaries. An event is parsed
only when a byte pattern says it holds the finish reason or the usage (vLLM writes compact
JSON), so a token costs two substring searches. The gateway always asks the engine for usage
(it is how generated tokens are counted exactly) and drops the usage-only event again when the
client did not ask for it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from fastapi.responses import StreamingResponse

from server.backends.engine_client import EngineError, EngineStream
from server.backends.lease import Lease
from server.errors import APIError, sse_error_event

log = logging.getLogger("leanserve.inference")

DONE = b"data: [DONE]\n\n"
EVENT_END = b"\n\n"


@dataclass(frozen=True)
class Event:
    """One whole SSE event, as the engine sent it."""

    raw: bytes
    token: bool = False  # carries a choice: not the usage-only chunk, not [DONE]
    finish_reason: str | None = None
    usage: dict | None = None
    usage_only: bool = False  # the usage chunk vLLM adds at the end (no choices)


def split_events(buffer: bytes) -> tuple[list[bytes], bytes]:
    """The whole events at the start of `buffer` (each with its blank line) and the rest, which
    waits for the next chunk: a chunk may end anywhere, even between the two newlines."""
    events = []
    start = 0
    while (end := buffer.find(EVENT_END, start)) >= 0:
        events.append(buffer[start : end + 2])
        start = end + 2
    return events, buffer[start:]


def parse_event(raw: bytes) -> Event:
    token = b'"choices":[{' in raw
    has_usage = b'"usage":{' in raw
    if not has_usage and b'"finish_reason":"' not in raw:
        return Event(raw, token)
    chunk = json.loads(raw[raw.index(b"{") :])
    choices = chunk.get("choices") or []
    finish = choices[0].get("finish_reason") if choices else None
    return Event(raw, token, finish, chunk.get("usage") or None, has_usage and not choices)


def for_client(events: Iterable[Event], wants_usage: bool) -> bytes:
    """What the client gets of `events`: all of them, less the usage-only one it did not ask
    for."""
    return b"".join(e.raw for e in events if wants_usage or not e.usage_only)


def broken_stream(variant: str) -> bytes:
    """What tells a client that the engine failed after the headers went out: the only way
    left is an error event, then [DONE]."""
    message = f"The engine for '{variant}' failed mid-stream."
    error = APIError(502, message, "server_error", None, "engine_error")
    return sse_error_event(error) + DONE


async def relay(
    lease: Lease, upstream: EngineStream, pending: bytes, wants_usage: bool
) -> AsyncIterator[bytes]:
    """The client's stream: `pending` (what was read before the answer started, at least one
    whole event), then the rest of `upstream`. Finishes the lease and closes `upstream` however
    it ends; the first step yields b"" only, so that a started relay always runs its `finally`.
    """
    usage, finish, error, status = None, None, None, 200

    def take(buffer: bytes) -> tuple[bytes, bytes]:
        nonlocal usage, finish
        raws, rest = split_events(buffer)
        events = [parse_event(raw) for raw in raws]
        for event in events:
            lease.event_sent(event.token)
            usage = event.usage or usage
            finish = event.finish_reason or finish
        return for_client(events, wants_usage), rest

    try:
        yield b""
        data, pending = take(pending)
        if data:
            yield data
        async for chunk in upstream:
            data, pending = take(pending + chunk)
            if data:
                yield data
    except EngineError as exc:
        status, error = 502, "engine_error"
        lease.engine_broke()
        log.warning("stream from %s broke: %s", lease.backend.name, exc)
        yield broken_stream(lease.backend.name)
    except (asyncio.CancelledError, GeneratorExit):
        status, error = 499, "client_disconnected"  # nginx's code for a client that left
        raise
    finally:
        # The bookkeeping first: in a cancelled task the await below may raise again.
        lease.finish(status, usage, finish, error)
        await upstream.aclose()


class ClosingStreamingResponse(StreamingResponse):
    """Closes its generator however the response ends (sent, client gone, a send that failed)
    at once, not whenever it is garbage-collected. The relay was started before, because one
    closed before its first step never runs its `finally`: so the engine connection is always
    closed and the lease always finished, once."""

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()
