"""Send a validated OpenAI request to the variant the router picks, and answer the client.

What is here: the request's limits and the fallback loop. A candidate that fails before the
first token has reached the client (Retryable) is skipped for the next one, bounded by
routing.max_attempts. Each attempt runs inside its backend's lease (server/backends/lease.py),
which does all the counting; forward.py sends it, relay.py relays a stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Mapping

from fastapi import Request
from fastapi.responses import Response

from server.backends.lease import Books, RequestInfo, Retryable
from server.backends.registry import Backend
from server.errors import APIError, unavailable
from server.inference import forward
from server.inference.context_window import check_context
from server.inference.forward import upstream_error  # noqa: F401  (imported from here too)
from server.inference.protocol import InferenceRequest
from server.inference.request_limits import check_request
from server.limits import StreamSlot
from server.routing import service as routing
from server.routing.policies import PolicyName
from server.state import AppState

log = logging.getLogger("leanserve.inference")

POLICY_FIELD = "leanserve_policy"  # body field for SDKs' extra_body


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


def response_headers(backend: Backend, route: routing.RoutePlan, request_id: str) -> dict:
    headers = {
        "X-Leanserve-Variant": backend.name,
        "X-Leanserve-Route-Reason": route.reason,
        "X-Leanserve-Policy": route.policy,
        "X-Request-Id": request_id,
    }
    if route.experiment:
        headers["X-Leanserve-Experiment"] = f"{route.experiment}/{route.arm}"
    return headers


def requested_policy(request: InferenceRequest, headers: Mapping[str, str]) -> PolicyName | None:
    raw = headers.get("x-leanserve-policy") or request.leanserve_policy
    return routing.parse_policy(raw)


async def serve(
    request: InferenceRequest, kind: str, path: str, state: AppState, http: Request
) -> Response:
    """`kind`: "chat" or "completions"; `path`: the engine's endpoint for it."""
    check_request(request, state.settings)  # the rate limit ran before, as a route dependency
    slot = StreamSlot(state)
    if request.stream:
        # Taken before anything is awaited: taken at the first token, it let every stream that
        # arrived while the first one waited through.
        slot.take(state.settings.limits.max_concurrent_streams)
    try:
        return await _serve(request, kind, path, state, http, slot if request.stream else None)
    except BaseException:
        slot.release()  # a stream under way owns its slot until it ends (its lease gives it back)
        raise


async def _serve(
    request: InferenceRequest,
    kind: str,
    path: str,
    state: AppState,
    http: Request,
    slot: StreamSlot | None,
) -> Response:
    settings, registry, metrics = state.settings, state.registry, state.metrics
    policy = requested_policy(request, http.headers)
    user = http.headers.get("x-user-id") or request.user
    arm = None
    if request.model == registry.base_name and policy is None:
        arm = state.experiments.assign(user)
    route = routing.route(request.model, policy, settings, registry, arm)
    info = RequestInfo(uuid.uuid4().hex, user, route.experiment, route.arm)
    books = Books(metrics, settings.routing.slo.ttft_s, state.experiments.record)
    last_error: APIError | None = None
    tried = 0
    for backend in route.candidates:
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
        body = engine_body(request, backend, settings.limits.max_tokens)
        headers = response_headers(backend, route, info.request_id)
        try:
            async with backend.lease(kind, info, books, slot) as lease:
                if slot is not None:
                    response = await forward.stream(lease, path, body, headers)
                else:
                    work = forward.complete(lease, path, body, headers)
                    response = await _until_disconnect(work, http)
        except Retryable as exc:
            metrics.fallbacks.labels(backend.name, exc.why).inc()
            log.warning(
                "%s failed before its first token (%s); trying the next", backend.name, exc.why
            )
            last_error = exc.error
            continue
        metrics.routing_decisions.labels(
            route.policy, backend.name, route.code if tried == 1 else "fallback"
        ).inc()
        if state.shadow is not None:
            state.shadow.follow(request, backend.name, response)  # scored after it is sent
        return response
    raise last_error or unavailable(f"No variant of '{request.model}' could serve the request.", 5)


async def _until_disconnect(work: Awaitable[Response], http: Request) -> Response:
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
