"""GET /health (the process is alive), GET /ready (every engine answers), GET /metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.api_docs import ERROR_RESPONSES
from server.auth import MetricsAccess, has_api_key
from server.backends.registry import Backend
from server.errors import APIError
from server.state import AppState, State

router = APIRouter(tags=["health"], responses={503: ERROR_RESPONSES[503]})


@router.get("/health")
async def health() -> dict:
    return {"status": "ok"}


def _details(backend: Backend) -> dict:
    return {
        "state": str(backend.engine.state),
        "url": backend.engine.url,
        "pid": backend.engine.pid,
        "restarts": backend.engine.restarts,
        "breaker": "open" if backend.breaker.open else "closed",
        "in_flight": backend.in_flight,
        "concurrency_limit": int(backend.admission.limit),
        "error": backend.engine.last_error,
        # Where it runs (leanserve plan): cores or GPUs; None for a remote engine.
        "placement": _placement(backend),
    }


def _placement(backend: Backend) -> dict | None:
    placement = getattr(backend.engine, "placement", None)
    return None if placement is None else placement.as_dict()


def _may_see_details(request: Request, state: AppState) -> bool:
    """Engine URLs, PIDs and error text map the inside for an attacker: once API keys are set,
    only callers with an API or the admin key see them (probes need only ready and states)."""
    return not state.keys.api or has_api_key(request, state)


@router.get("/ready", summary="200 when the routed model can be served; each engine's state")
async def ready(request: Request, state: State) -> JSONResponse:
    details = _may_see_details(request, state)
    engines = {
        name: _details(b) if details else {"state": str(b.engine.state)}
        for name, b in state.registry.backends.items()
    }
    ok = state.registry.ready
    return JSONResponse({"ready": ok, "engines": engines}, 200 if ok else 503)


@router.get("/metrics", include_in_schema=False, dependencies=[MetricsAccess])
async def metrics(state: State) -> Response:
    if not state.settings.metrics_enabled:
        raise APIError(404, "Metrics are off (metrics_enabled: false).", "not_found_error")
    m = state.metrics
    for name, backend in state.registry.backends.items():
        m.engine_up.labels(name).set(1 if backend.ready else 0)
    # The slow series were collected in the background (metrics/refresher.py); even writing
    # out the text runs off the event loop.
    body = await asyncio.to_thread(generate_latest, m.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
