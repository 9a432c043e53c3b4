"""Send a validated OpenAI request to the variant the router picks, and relay the answer.

The gateway adds little on the hot path: the engine's JSON and SSE bytes pass through as they
come; only the final usage event of a stream is parsed (for token counts), and it is dropped
again when the client did not ask for usage. A variant that fails before the first token has
been sent is skipped for the next candidate (bounded by routing.max_attempts) and its breaker
counts the failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import httpx
from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from server.backends.registry import Backend
from server.errors import APIError, bad_request, sse_error_event, unavailable
from server.inference.protocol import ChatCompletionRequest, InferenceRequest
from server.inference.request_limits import check_request
from server.limits import StreamSlot
from server.metrics.registry import Metrics
from server.routing import service as routing
from server.state import AppState

log = logging.getLogger("leanserve.inference")

DONE = b"data: [DONE]\n\n"
POLICY_FIELD = "leanserve_policy"  # body field for SDKs' extra_body
MAX_ENGINE_MESSAGE = 500  # an engine's error message may echo the request: relay only its start


@dataclass
class Call:
    """One request on its way through a backend, for timing and accounting."""

    backend: Backend
    route: str  # "chat" or "completions"
    path: str  # engine path, e.g. /v1/chat/completions
    started: float
    request_id: str
    plan: routing.RoutePlan
    user: str | None = None
    first_token_at: float | None = None
    last_event_at: float | None = None  # streams: when the previous event was relayed


@dataclass
class Outcome:
    """What happened to a request, for experiments and metrics."""

    request_id: str
    experiment: str | None
    arm: str | None
    variant: str
    user: str | None
    latency_s: float
    ttft_s: float | None
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    error: str | None


class Retryable(Exception):
    """The backend failed before anything reached the client: another one may serve it."""

    def __init__(self, error: APIError, why: str):
        super().__init__(error.message)
        self.error = error
        self.why = why


def engine_body(
    request: InferenceRequest, backend: Backend, max_tokens_cap: int | None = None
) -> dict:
    body = request.model_dump(exclude_unset=True)
    body.pop(POLICY_FIELD, None)
    body["model"] = backend.name
    if max_tokens_cap is not None:
        # The cap travels with the request: without it, a request that names no max_tokens
        # (or names it in a field the endpoint ignores) generates to the end of the context.
        asked = body.pop("max_completion_tokens", None) or body.get("max_tokens")
        body["max_tokens"] = min(max_tokens_cap, asked or max_tokens_cap)
    return body


def response_headers(call: Call) -> dict[str, str]:
    headers = {
        "X-Leanserve-Variant": call.backend.name,
        "X-Leanserve-Route-Reason": call.plan.reason,
        "X-Leanserve-Policy": call.plan.policy,
        "X-Request-Id": call.request_id,
    }
    if call.plan.experiment:
        headers["X-Leanserve-Experiment"] = f"{call.plan.experiment}/{call.plan.arm}"
    return headers


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


def requested_policy(request: InferenceRequest, headers: Mapping[str, str]):
    raw = headers.get("x-leanserve-policy") or request.leanserve_policy
    return routing.parse_policy(raw)


async def serve(
    request: InferenceRequest, route: str, path: str, state: AppState, http: Request
) -> Response:
    slot = StreamSlot(state)
    try:
        return await _serve(request, route, path, state, http, slot)
    except BaseException:
        slot.release()  # a stream that got under way owns its slot until it ends (_relay)
        raise


async def _serve(
    request: InferenceRequest,
    route: str,
    path: str,
    state: AppState,
    http: Request,
    slot: StreamSlot,
) -> Response:
    settings, registry, metrics = state.settings, state.registry, state.metrics
    headers = http.headers
    check_request(request, settings)  # the rate limit ran before, as a route dependency
    if request.stream:
        # Taken before anything is awaited: taken at the first token (as it was), it let every
        # stream that arrived while the first one waited through.
        slot.take(settings.limits.max_concurrent_streams)
    policy = requested_policy(request, headers)
    user = headers.get("x-user-id") or request.user
    arm = None
    if request.model == registry.base_name and policy is None:
        arm = state.experiments.assign(user)
    plan = routing.plan(request.model, policy, settings, registry, arm)
    request_id = uuid.uuid4().hex
    last_error: APIError | None = None
    tried = 0
    for backend in plan.candidates:
        if tried >= settings.routing.max_attempts:
            break
        if tried > 0 and routing.usable(backend, settings) is not None:
            continue
        if not backend.ready:
            last_error = unavailable(
                f"The engine for '{backend.name}' is {backend.engine.state}; retry shortly.",
                backend.engine.retry_after_s(),
            )
            continue
        tried += 1
        await check_context(request, backend)
        call = Call(backend, route, path, time.perf_counter(), request_id, plan, user)
        body = engine_body(request, backend, settings.limits.max_tokens)
        try:
            if body.get("stream"):
                response = await _stream(call, body, state, slot)
            else:
                response = await _until_disconnect(_complete(call, body, state), http)
        except Retryable as exc:
            backend.breaker.failure()
            metrics.fallbacks.labels(backend.name, exc.why).inc()
            log.warning(
                "%s failed before its first token (%s); trying the next", backend.name, exc.why
            )
            last_error = exc.error
            continue
        metrics.routing_decisions.labels(
            plan.policy, backend.name, plan.code if tried == 1 else "fallback"
        ).inc()
        return response
    raise last_error or unavailable(f"No variant of '{request.model}' could serve the request.", 5)


async def _until_disconnect(work, http: Request):
    """Run `work`, but cancel it when the client goes away: closing the engine connection makes
    vLLM abort the generation instead of finishing it for no one."""
    task = asyncio.ensure_future(work)
    while not task.done():
        done, _ = await asyncio.wait({task}, timeout=0.5)
        if not done and await http.is_disconnected():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise APIError(499, "The client closed the connection.", "client_disconnected")
    return task.result()


async def _complete(call: Call, body: dict, state: AppState) -> Response:
    backend, metrics = call.backend, state.metrics
    backend.in_flight += 1
    metrics.in_flight.labels(backend.name).inc()
    status, usage, finish, error = 503, None, None, None
    retrying = False
    try:
        try:
            upstream = await backend.client.post(call.path, json=body)
        except httpx.TimeoutException as exc:
            if isinstance(exc, httpx.ConnectTimeout):
                raise Retryable(transport_error(exc, backend), "unreachable") from exc
            status = 504
            raise transport_error(exc, backend) from exc
        except httpx.HTTPError as exc:
            raise Retryable(transport_error(exc, backend), "unreachable") from exc
        status = upstream.status_code
        if status >= 500:
            raise Retryable(upstream_error(status, upstream.content), "engine_error")
        if status != 200:
            error = upstream_error(status, upstream.content)
            status = error.status
            raise error
        payload = json.loads(upstream.content)
        usage = payload.get("usage")
        choices = payload.get("choices") or [{}]
        finish = choices[0].get("finish_reason")
        backend.breaker.success()
        return Response(upstream.content, 200, response_headers(call), "application/json")
    except Retryable:
        retrying = True  # the next candidate's outcome is the one that counts
        raise
    except asyncio.CancelledError:
        status = 499  # the client left
        raise
    finally:
        backend.in_flight -= 1
        metrics.in_flight.labels(backend.name).dec()
        metrics.requests.labels(backend.name, call.route, str(status)).inc()
        error = None if status == 200 else str(status)
        _finish(call, state, usage, finish, error, record=not retrying)


async def _stream(call: Call, body: dict, state: AppState, slot: StreamSlot) -> Response:
    backend, metrics = call.backend, state.metrics
    options = dict(body.get("stream_options") or {})
    client_wants_usage = bool(options.get("include_usage"))
    # Always ask the engine for usage: it is how generated tokens are counted exactly.
    body["stream_options"] = {**options, "include_usage": True}
    backend.in_flight += 1
    ticket = backend.stats.start_waiting()
    sent_at = time.monotonic()
    try:
        try:
            upstream = await backend.client.send(
                backend.client.build_request("POST", call.path, json=body), stream=True
            )
        except httpx.HTTPError as exc:
            metrics.requests.labels(backend.name, call.route, "503").inc()
            raise Retryable(transport_error(exc, backend), "unreachable") from exc
        if upstream.status_code != 200:
            content = await upstream.aread()
            await upstream.aclose()
            error = upstream_error(upstream.status_code, content)
            metrics.requests.labels(backend.name, call.route, str(error.status)).inc()
            if upstream.status_code >= 500:
                raise Retryable(error, "engine_error")
            raise error
        # Wait for the first event before answering: until then another variant can still
        # take over without the client noticing.
        chunks = upstream.aiter_raw()
        first = b""
        try:
            while b"\n\n" not in first:
                first += await anext(chunks)
        except (httpx.HTTPError, StopAsyncIteration) as exc:
            await upstream.aclose()
            metrics.requests.labels(backend.name, call.route, "502").inc()
            error = APIError(502, "The engine broke before its first token.", "server_error")
            raise Retryable(error, "engine_error") from exc
        backend.admission.observe(
            time.monotonic() - sent_at,
            sent_at,
            backend.in_flight,
            state.settings.routing.slo.ttft_s,
        )
    finally:
        backend.in_flight -= 1
        backend.stats.first_token(ticket)
    backend.breaker.success()
    relay = _relay(call, upstream, chunks, first, client_wants_usage, state, slot)
    await anext(relay)  # started: from here on, closing it runs its `finally`
    return ClosingStreamingResponse(
        relay,
        media_type="text/event-stream",
        headers={**response_headers(call), "Cache-Control": "no-cache"},
    )


class ClosingStreamingResponse(StreamingResponse):
    """Closes its generator however the response ends (sent, client gone, a send that failed)
    at once, not whenever it is garbage-collected. _stream started the generator, because one
    closed before its first step never runs its `finally`: so the engine connection is always
    closed and the stream slot always given back, once."""

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


async def _relay(
    call: Call,
    upstream: httpx.Response,
    chunks: AsyncIterator[bytes],
    first: bytes,
    client_wants_usage: bool,
    state: AppState,
    slot: StreamSlot,
) -> AsyncIterator[bytes]:
    backend, metrics = call.backend, state.metrics
    backend.in_flight += 1
    metrics.in_flight.labels(backend.name).inc()
    usage, finish, error = None, None, None
    status = "200"
    pending = first

    def split() -> bytes:
        """Whole events out of `pending`, less the usage-only chunk the client did not ask for."""
        nonlocal pending, usage, finish
        out = []
        while (end := pending.find(b"\n\n")) >= 0:
            event, pending = pending[: end + 2], pending[end + 2 :]
            now = time.perf_counter()
            if call.first_token_at is None:
                call.first_token_at = now
            if b'"choices":[{' in event:  # a token, not the usage chunk or [DONE]
                if call.last_event_at is not None:
                    backend.stats.observe_token_gap(now - call.last_event_at)
                call.last_event_at = now
            if b'"finish_reason":"' in event:
                finish = json.loads(event[event.index(b"{") :])["choices"][0].get("finish_reason")
            if b'"usage":{' in event:
                chunk = json.loads(event[event.index(b"{") :])
                usage = chunk.get("usage") or usage
                if not client_wants_usage and not chunk.get("choices"):
                    continue
            out.append(event)
        return b"".join(out)

    try:
        yield b""  # _stream primes the generator with this, so that closing it runs `finally`
        if data := split():
            yield data
        async for raw in chunks:
            pending += raw
            if data := split():
                yield data
    except httpx.HTTPError as exc:
        # Headers are sent: the only way left to tell the client is an error event, then [DONE].
        status, error = "502", "engine_error"
        backend.breaker.failure()
        log.warning("stream from %s broke: %r", backend.name, exc)
        message = f"The engine for '{backend.name}' failed mid-stream."
        yield sse_error_event(APIError(502, message, "server_error", None, "engine_error"))
        yield DONE
    except (asyncio.CancelledError, GeneratorExit):
        status, error = "499", "client_disconnected"  # nginx's code for a client that left
        raise
    finally:
        # The bookkeeping first: in a cancelled task the await below may raise again.
        backend.in_flight -= 1
        slot.release()
        metrics.in_flight.labels(backend.name).dec()
        metrics.requests.labels(backend.name, call.route, status).inc()
        _finish(call, state, usage, finish, error)
        await upstream.aclose()


def _outcome(call: Call, usage: dict | None, finish: str | None, error: str | None) -> Outcome:
    usage = usage or {}
    return Outcome(
        request_id=call.request_id,
        experiment=call.plan.experiment,
        arm=call.plan.arm,
        variant=call.backend.name,
        user=call.user,
        latency_s=time.perf_counter() - call.started,
        ttft_s=(call.first_token_at - call.started) if call.first_token_at else None,
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        finish_reason=finish,
        error=error,
    )


def _finish(
    call: Call,
    state: AppState,
    usage: dict | None,
    finish: str | None,
    error: str | None,
    record: bool = True,
) -> None:
    metrics: Metrics = state.metrics
    backend = call.backend
    outcome = _outcome(call, usage, finish, error)
    metrics.request_seconds.labels(backend.name, call.route).observe(outcome.latency_s)
    metrics.record_usage(backend.name, usage)
    tpot = None
    if outcome.completion_tokens > 1:
        since = call.first_token_at or call.started
        tpot = (time.perf_counter() - since) / (outcome.completion_tokens - 1)
        metrics.tpot_seconds.labels(backend.name).observe(tpot)
    if outcome.ttft_s is not None:
        metrics.ttft_seconds.labels(backend.name).observe(outcome.ttft_s)
    if error is None:
        # A stream's time per output token was already observed event by event.
        backend.stats.observe(outcome.ttft_s, None if call.last_event_at else tpot)
    if call.plan.experiment and record:
        state.experiments.record(outcome)
