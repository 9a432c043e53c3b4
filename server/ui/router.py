"""The status page at /ui/, and GET /v1/ui/summary (request rates and the routing split).

The page is three static files: they carry no data, so they are served without a key. The
page's script reads the gateway's JSON APIs, which need the API key when keys are configured.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, RedirectResponse

from server.api_docs import ERROR_RESPONSES
from server.auth import ApiKey
from server.errors import APIError
from server.metrics.registry import Metrics
from server.state import State
from server.ui.rates import RequestRates

STATIC = Path(__file__).parent / "static"
FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# Only this gateway: no CDN, no inline script, no frames; the key never leaves in a Referer.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(tags=["ui"], responses=ERROR_RESPONSES)


def start_rates(app: FastAPI, metrics: Metrics) -> asyncio.Task:
    """Sample the request counters in the background from now on (the lifespan cancels it)."""
    app.state.ui_rates = RequestRates(metrics)
    return asyncio.create_task(app.state.ui_rates.run(), name="ui-rates")


@router.get("/ui", include_in_schema=False)
async def ui_redirect() -> RedirectResponse:
    # The page's relative links (app.js, style.css) resolve against /ui/.
    return RedirectResponse("/ui/", status_code=308)


@router.get("/ui/", include_in_schema=False)
async def ui_index() -> FileResponse:
    return _file("index.html")


@router.get("/ui/{name}", include_in_schema=False)
async def ui_file(name: str) -> FileResponse:
    if name not in FILES:
        raise APIError(404, f"No file '{name}' in /ui/.", "not_found_error", None, "not_found")
    return _file(name)


def _file(name: str) -> FileResponse:
    return FileResponse(STATIC / name, media_type=FILES[name], headers=HEADERS)


@router.get(
    "/v1/ui/summary",
    dependencies=[ApiKey],
    summary="Request rates per variant and the routing split over the last minutes",
)
async def ui_summary(request: Request, state: State) -> dict:
    rates: RequestRates | None = getattr(request.app.state, "ui_rates", None)
    if rates is None:  # an app built without the sampler: the live counters alone
        rates = request.app.state.ui_rates = RequestRates(state.metrics)
    routing = state.settings.routing
    return {
        "base": state.registry.base_name,
        "default_policy": routing.default_policy,
        "quality_floor": routing.quality_floor,
        **rates.summary(),
    }
