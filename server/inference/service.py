"""Send a validated OpenAI request to its variant's engine and relay the answer.

The gateway adds little on the hot path: the engine's JSON and SSE bytes pass through as they
come; only the final usage event of a stream is parsed (for token counts), and it is dropped
again when the client did not ask for usage.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
from fastapi.responses import Response, StreamingResponse

from server.backends.registry import Backend
from server.errors import APIError, bad_request, sse_error_event, unavailable
from server.inference.protocol import ChatCompletionRequest, InferenceRequest
from server.metrics.registry import Metrics

log = logging.getLogger("leanserve.inference")

DONE = b"data: [DONE]\n\n"


@dataclass
class Call:
    """One request on its way through a backend, for timing and accounting."""

    backend: Backend
    route: str  # "chat" or "completions"
    path: str  # engine path, e.g. /v1/chat/completions
    started: float
    first_token_at: float | None = None


def check_limits(request: InferenceRequest, max_n: int) -> None:
    if request.n is not None and request.n > max_n:
        raise bad_request(
            f"n={request.n} is above this server's limit of {max_n}.", "n", "n_too_large"
        )


def engine_body(request: InferenceRequest, backend: Backend) -> dict:
    body = request.model_dump(exclude_unset=True)
    body["model"] = backend.name
    return body


def response_headers(backend: Backend) -> dict[str, str]:
    return {"X-Leanserve-Variant": backend.name}


def upstream_error(status: int, content: bytes) -> APIError:
    """Re-shape an engine's error into ours: its 4xx stay 4xx, anything else is a 502."""
    message, param = content.decode(errors="replace")[:1000], None
    try:
        error = json.loads(content)["error"]
        message, param = str(error.get("message", message)), error.get("param")
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    if 400 <= status < 500:
        code = (
            "context_length_exceeded"
            if "max_model_len" in message or "context length" in message
            else None
        )
        return APIError(status, message, "invalid_request_error", param, code)
    return APIError(502, f"The engine failed: {message}", "server_error", None, "engine_error")


def transport_error(exc: httpx.HTTPError, backend: Backend) -> APIError:
    if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
        return APIError(
            504, "The engine did not answer in time.", "timeout", None, "engine_timeout"
        )
    return unavailable(
        f"The engine for '{backend.name}' is not reachable ({type(exc).__name__}); retry shortly.",
        backend.engine.retry_after_s(),
    )


def _prompt_token_bound(request: InferenceRequest) -> int:
    """An upper bound on prompt tokens: byte-level BPE makes every token at least one byte,
    plus room for the chat template. Cheap enough to run on every request."""
    if isinstance(request, ChatCompletionRequest):
        text = sum(len(json.dumps(m.content).encode()) for m in request.messages)
        return text + 16 * len(request.messages) + 64
    prompts = request.prompt if isinstance(request.prompt, list) else [request.prompt]
    return max(len(p) if isinstance(p, list) else len(p.encode()) for p in prompts) + 8


async def check_context(request: InferenceRequest, backend: Backend) -> None:
    """Refuse prompt + max_tokens beyond the context window (vLLM would silently cut output).

    Only requests that might not fit pay for an exact count through the engine's /tokenize.
    """
    wanted = getattr(request, "max_completion_tokens", None) or request.max_tokens
    if wanted is None:
        return
    limit = await backend.context_window()
    if limit is None or _prompt_token_bound(request) + wanted <= limit:
        return
    if isinstance(request, ChatCompletionRequest):
        body = {
            "model": backend.name,
            "messages": request.model_dump(exclude_unset=True)["messages"],
        }
        body["add_generation_prompt"] = True
    else:
        prompt = request.prompt
        prompts = (
            [prompt]
            if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int))
            else prompt
        )
        counts = [len(p) if isinstance(p, list) else None for p in prompts]
        if None not in counts:
            return _refuse_context(max(counts), wanted, limit)
        body = {"model": backend.name, "prompt": max(prompts, key=len)}
    try:
        response = await backend.client.post("/tokenize", json=body)
    except httpx.HTTPError as exc:
        raise transport_error(exc, backend) from exc
    if response.status_code != 200:
        raise upstream_error(response.status_code, response.content)
    _refuse_context(response.json()["count"], wanted, limit)


def _refuse_context(prompt_tokens: int, wanted: int, limit: int) -> None:
    if prompt_tokens + wanted > limit:
        raise bad_request(
            f"This model's context window is {limit} tokens, but the request asks for "
            f"{prompt_tokens + wanted} ({prompt_tokens} in the prompt, {wanted} to generate). "
            "Shorten the prompt or lower max_tokens.",
            "max_tokens",
            "context_length_exceeded",
        )


async def serve(
    request: InferenceRequest, route: str, path: str, backend: Backend, metrics: Metrics
) -> Response:
    if not backend.ready:
        raise unavailable(
            f"The engine for '{backend.name}' is {backend.engine.state}; retry shortly.",
            backend.engine.retry_after_s(),
        )
    call = Call(backend, route, path, time.perf_counter())
    await check_context(request, backend)
    body = engine_body(request, backend)
    if body.get("stream"):
        return await _stream(call, body, metrics)
    return await _complete(call, body, metrics)


async def _complete(call: Call, body: dict, metrics: Metrics) -> Response:
    backend = call.backend
    backend.in_flight += 1
    metrics.in_flight.labels(backend.name).inc()
    status = 503
    try:
        try:
            upstream = await backend.client.post(call.path, json=body)
        except httpx.HTTPError as exc:
            raise transport_error(exc, backend) from exc
        status = upstream.status_code
        if status != 200:
            error = upstream_error(status, upstream.content)
            status = error.status
            raise error
        usage = json.loads(upstream.content).get("usage")
        _account(call, metrics, usage, first_token_at=None)
        return Response(upstream.content, 200, response_headers(backend), "application/json")
    finally:
        backend.in_flight -= 1
        metrics.in_flight.labels(backend.name).dec()
        metrics.requests.labels(backend.name, call.route, str(status)).inc()
        metrics.request_seconds.labels(backend.name, call.route).observe(
            time.perf_counter() - call.started
        )


async def _stream(call: Call, body: dict, metrics: Metrics) -> Response:
    backend = call.backend
    options = dict(body.get("stream_options") or {})
    client_wants_usage = bool(options.get("include_usage"))
    # Always ask the engine for usage: it is how generated tokens are counted exactly.
    body["stream_options"] = {**options, "include_usage": True}
    try:
        upstream = await backend.client.send(
            backend.client.build_request("POST", call.path, json=body), stream=True
        )
    except httpx.HTTPError as exc:
        metrics.requests.labels(backend.name, call.route, "503").inc()
        raise transport_error(exc, backend) from exc
    if upstream.status_code != 200:
        content = await upstream.aread()
        await upstream.aclose()
        error = upstream_error(upstream.status_code, content)
        metrics.requests.labels(backend.name, call.route, str(error.status)).inc()
        raise error
    return StreamingResponse(
        _relay(call, upstream, client_wants_usage, metrics),
        media_type="text/event-stream",
        headers={**response_headers(backend), "Cache-Control": "no-cache"},
    )


async def _relay(
    call: Call, upstream: httpx.Response, client_wants_usage: bool, metrics: Metrics
) -> AsyncIterator[bytes]:
    backend = call.backend
    backend.in_flight += 1
    metrics.in_flight.labels(backend.name).inc()
    usage = None
    status = "200"
    pending = b""
    try:
        async for raw in upstream.aiter_raw():
            pending += raw
            out = []
            while (end := pending.find(b"\n\n")) >= 0:
                event, pending = pending[: end + 2], pending[end + 2 :]
                if call.first_token_at is None:
                    call.first_token_at = time.perf_counter()
                if b'"usage":{' in event:
                    chunk = json.loads(event[event.index(b"{") :])
                    usage = chunk.get("usage") or usage
                    if not client_wants_usage and not chunk.get("choices"):
                        continue  # the usage-only chunk we added
                out.append(event)
            if out:
                yield b"".join(out)
    except httpx.HTTPError as exc:
        # Headers are sent: the only way left to tell the client is an error event, then [DONE].
        status = "502"
        log.warning("stream from %s broke: %r", backend.name, exc)
        yield sse_error_event(
            APIError(
                502,
                f"The engine for '{backend.name}' failed mid-stream.",
                "server_error",
                None,
                "engine_error",
            )
        )
        yield DONE
    finally:
        await upstream.aclose()
        backend.in_flight -= 1
        metrics.in_flight.labels(backend.name).dec()
        metrics.requests.labels(backend.name, call.route, status).inc()
        metrics.request_seconds.labels(backend.name, call.route).observe(
            time.perf_counter() - call.started
        )
        _account(call, metrics, usage, call.first_token_at)


def _account(
    call: Call, metrics: Metrics, usage: dict | None, first_token_at: float | None
) -> None:
    name = call.backend.name
    completion = metrics.record_usage(name, usage)
    if first_token_at is None:
        return
    now = time.perf_counter()
    metrics.ttft_seconds.labels(name).observe(first_token_at - call.started)
    if completion > 1:
        metrics.tpot_seconds.labels(name).observe((now - first_token_at) / (completion - 1))
