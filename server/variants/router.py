"""/v1/variants: what is built, building or serving; admins add and retire variants."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from server.api_docs import ERROR_RESPONSES
from server.auth import Admin, ApiKey, RateLimited, sees_detail
from server.state import AppState, State
from server.variants.service import Variant

router = APIRouter(prefix="/v1", tags=["variants"], responses=ERROR_RESPONSES)


class VariantCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    recipe: str = Field(min_length=1, max_length=200, examples=["w8a8"])


@router.get("/variants", dependencies=[ApiKey])
async def list_variants(request: Request, state: State) -> dict:
    base = state.registry.backends.get(state.registry.base_name)
    data = [
        {
            "id": "base",
            "model": state.registry.base_name,
            "recipe": None,
            "state": "ready"
            if base and base.ready
            else str(base.engine.state if base else "absent"),
            "percent": 100.0,
            "card": None,
            "live_quality": None,  # the base is what variants are measured against
        }
    ]
    detail = sees_detail(request, state)  # host paths, raw build errors: admin only
    data += [_view(state, v, detail) for v in state.variants.variants.values()]
    return {"object": "list", "data": data}


@router.get("/variants/{vid}", dependencies=[ApiKey])
async def get_variant(vid: str, request: Request, state: State) -> dict:
    return _view(state, state.variants.get(vid), sees_detail(request, state))


def _view(state: AppState, variant: Variant, detail: bool) -> dict:
    """The variant as the manager shows it, and its quality against the base on live traffic
    (server/quality/): null until it serves."""
    backend = state.registry.backends.get(variant.name)
    live = backend.live_quality.view() if backend is not None else None
    return {**state.variants.view(variant, detail), "live_quality": live}


@router.post("/variants", dependencies=[Admin, RateLimited], status_code=202)
async def create_variant(body: VariantCreate, state: State) -> dict:
    return state.variants.view(state.variants.request(body.recipe), detail=True)


@router.delete("/variants/{vid}", dependencies=[Admin, RateLimited])
async def retire_variant(vid: str, state: State) -> dict:
    variant = await state.variants.retire(vid)
    return {"id": variant.id, "model": variant.name, "state": "retired"}
