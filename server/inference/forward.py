"""One attempt at a request on one backend, inside its lease: send it, and answer the client
once the engine has answered (a whole JSON answer, or a stream's first event).

Until then nothing has reached the client, so a failure raises Retryable and the next candidate
may serve the request without the client noticing.
"""

from __future__ import annotations

import json

from fastapi.responses import Response

from server.backends.engine_client import EngineError
from server.backends.lease import Lease, Retryable
from server.backends.registry import Backend
from server.errors import APIError, unavailable
from server.inference.relay import EVENT_END, ClosingStreamingResponse, relay

MAX_ENGINE_MESSAGE = 500  # an engine's error message may echo the request: relay only its start


def upstream_error(status: int, content: bytes) -> APIError:
    """Re-shape an engine's error into ours: its 4xx stay 4xx, anything else is a 502."""
    message, param = content[: 4 * MAX_ENGINE_MESSAGE].decode(errors="replace"), None
    try:
        error = json.loads(content)["error"]
        message, param = str(error.get("message", message)), error.get("param")
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    message = message[:MAX_ENGINE_MESSAGE]
    param = param[:64] if isinstance(param, str) else None
    if 400 <= status < 500:
        too_long = "max_model_len" in message or "context length" in message
        code = "context_length_exceeded" if too_long else None
        return APIError(status, message, "invalid_request_error", param, code)
    return APIError(502, f"The engine failed: {message}", "server_error", None, "engine_error")


def transport_error(exc: EngineError, backend: Backend) -> APIError:
    if exc.timed_out:
        return APIError(
            504, "The engine did not answer in time.", "timeout", None, "engine_timeout"
        )
    return unavailable(
        f"The engine for '{backend.name}' is not reachable ({exc.cause}); retry shortly.",
        backend.engine.retry_after_s(),
    )


def _unreachable(exc: EngineError, lease: Lease) -> Retryable:
    return Retryable(transport_error(exc, lease.backend), "unreachable", 503)


async def complete(lease: Lease, path: str, body: dict, headers: dict[str, str]) -> Response:
    """A non-streamed request: the engine's JSON answer, as it came."""
    try:
        reply = await lease.client.complete(path, body)
    except EngineError as exc:
        if exc.timed_out:  # the engine may be working on it still: do not send it twice
            raise transport_error(exc, lease.backend) from exc
        raise _unreachable(exc, lease) from exc
    if reply.status >= 500:
        raise Retryable(upstream_error(reply.status, reply.content), "engine_error", reply.status)
    if reply.status != 200:
        raise upstream_error(reply.status, reply.content)
    payload = reply.json()
    choices = payload.get("choices") or [{}]
    lease.succeeded(payload.get("usage"), choices[0].get("finish_reason"))
    return Response(reply.content, 200, headers, "application/json")


async def stream(lease: Lease, path: str, body: dict, headers: dict[str, str]) -> Response:
    """A streamed request: answered once the engine's first event is in; the relay then owns
    the lease and the engine's stream until the stream ends."""
    options = dict(body.get("stream_options") or {})
    wants_usage = bool(options.get("include_usage"))
    # Always ask the engine for usage: it is how generated tokens are counted exactly.
    body["stream_options"] = {**options, "include_usage": True}
    try:
        upstream = await lease.client.stream(path, body)
    except EngineError as exc:
        raise _unreachable(exc, lease) from exc
    try:
        if upstream.status != 200:
            try:
                error = upstream_error(upstream.status, await upstream.read())
            except EngineError as exc:
                raise _unreachable(exc, lease) from exc
            if upstream.status >= 500:
                raise Retryable(error, "engine_error")
            raise error
        # Wait for the first event before answering: until then another variant can still
        # take over without the client noticing.
        chunks = aiter(upstream)
        pending = b""
        try:
            while EVENT_END not in pending:
                pending += await anext(chunks)
        except (EngineError, StopAsyncIteration) as exc:
            error = APIError(502, "The engine broke before its first token.", "server_error")
            raise Retryable(error, "engine_error") from exc
    except BaseException:
        await upstream.aclose()
        raise
    lease.first_event()
    events = relay(lease, upstream, pending, wants_usage)
    await anext(events)  # started: from here on, closing it runs its `finally`
    lease.hand_over()
    return ClosingStreamingResponse(
        events, media_type="text/event-stream", headers={**headers, "Cache-Control": "no-cache"}
    )
