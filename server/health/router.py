"""GET /health (the process is alive), GET /ready (every engine answers), GET /metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.state import State

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@router.get("/ready")
async def ready(state: State) -> JSONResponse:
    engines = {
        name: {
            "state": str(b.engine.state),
            "url": b.engine.url,
            "pid": b.engine.pid,
            "restarts": b.engine.restarts,
            "error": b.engine.last_error,
        }
        for name, b in state.registry.backends.items()
    }
    ok = state.registry.ready
    return JSONResponse({"ready": ok, "engines": engines}, 200 if ok else 503)


@router.get("/metrics", include_in_schema=False)
async def metrics(state: State) -> Response:
    m = state.metrics
    for name, backend in state.registry.backends.items():
        m.engine_up.labels(name).set(1 if backend.ready else 0)
        m.engine_restarts.labels(name).set(backend.engine.restarts)
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
