"""/v1/variants: what is built, building or serving; admins add and retire variants."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from server.api_docs import ERROR_RESPONSES
from server.auth import Admin, ApiKey
from server.state import State

router = APIRouter(prefix="/v1", tags=["variants"], responses=ERROR_RESPONSES)


class VariantCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    recipe: str = Field(min_length=1, max_length=200, examples=["w8a8"])


@router.get("/variants", dependencies=[ApiKey])
async def list_variants(state: State) -> dict:
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
        }
    ]
    data += [state.variants.view(v) for v in state.variants.variants.values()]
    return {"object": "list", "data": data}


@router.get("/variants/{vid}", dependencies=[ApiKey])
async def get_variant(vid: str, state: State) -> dict:
    return state.variants.view(state.variants.get(vid))


@router.post("/variants", dependencies=[Admin], status_code=202)
async def create_variant(body: VariantCreate, state: State) -> dict:
    return state.variants.view(state.variants.request(body.recipe))


@router.delete("/variants/{vid}", dependencies=[Admin])
async def retire_variant(vid: str, state: State) -> dict:
    variant = await state.variants.retire(vid)
    return {"id": variant.id, "model": variant.name, "state": "retired"}
