"""GET /health (the process is alive), GET /ready (every engine answers), GET /metrics."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.api_docs import ERROR_RESPONSES
from server.errors import APIError
from server.metrics import engine_stats
from server.state import State

router = APIRouter(tags=["health"], responses={503: ERROR_RESPONSES[503]})


@router.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@router.get("/ready", summary="200 when the routed model can be served; each engine's state")
async def ready(state: State) -> JSONResponse:
    engines = {
        name: {
            "state": str(b.engine.state),
            "url": b.engine.url,
            "pid": b.engine.pid,
            "restarts": b.engine.restarts,
            "breaker": "open" if b.breaker.open else "closed",
            "in_flight": b.in_flight,
            "concurrency_limit": int(b.admission.limit),
            "error": b.engine.last_error,
        }
        for name, b in state.registry.backends.items()
    }
    ok = state.registry.ready
    return JSONResponse({"ready": ok, "engines": engines}, 200 if ok else 503)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, state: State) -> Response:
    if not state.settings.metrics_enabled:
        raise APIError(404, "Metrics are off (metrics_enabled: false).", "not_found_error")
    key = state.settings.auth.metrics_key
    if key is not None:
        token = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(token.encode(), key.encode()):
            raise APIError(
                401,
                "/metrics needs the metrics key.",
                "authentication_error",
                None,
                "invalid_api_key",
            )
    m = state.metrics
    await engine_stats.refresh(state.registry, m)
    for name, backend in state.registry.backends.items():
        m.engine_up.labels(name).set(1 if backend.ready else 0)
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
