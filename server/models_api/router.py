"""GET /v1/models: the names a client can put in `model`.

The base name is routed by the default policy; "<base>:<variant>" names pin a variant. Each
entry carries a summary of the variant's card.
"""

from __future__ import annotations

import time

from fastapi import APIRouter

from compress.schema import Card
from server.api_docs import ERROR_RESPONSES
from server.auth import ApiKey
from server.routing.service import quality_of, speedup_of
from server.state import State

router = APIRouter(prefix="/v1", tags=["models"], dependencies=[ApiKey], responses=ERROR_RESPONSES)
_CREATED = int(time.time())


def _summary(card: Card | None) -> dict | None:
    if card is None:
        return None
    quality, size = card.quality, card.size
    return {
        "recipe": card.recipe.name,
        "perplexity": quality.perplexity,
        "perplexity_change": quality.perplexity_change,
        "kl_to_base": quality.kl_to_base,
        "top1_agreement": quality.top1_agreement,
        "size_bytes": size.bytes,
        "size_ratio": size.size_ratio,
        "speedup_32": card.speed.speedup_32,
    }


@router.get("/models")
async def list_models(state: State) -> dict:
    registry = state.registry
    data = [
        {
            "id": registry.base_name,
            "object": "model",
            "created": _CREATED,
            "owned_by": "leanserve",
            "routing": f"routed by the {state.settings.routing.default_policy} policy",
        }
    ]
    for backend in registry.backends.values():
        if backend.variant is None and backend.name == registry.base_name:
            continue
        if not backend.ready:
            continue
        data.append(
            {
                "id": backend.name,
                "object": "model",
                "created": _CREATED,
                "owned_by": "leanserve",
                "routing": "pinned",
                "quality": quality_of(backend),
                "speedup": speedup_of(backend),
                "card": _summary(backend.card),
            }
        )
    return {"object": "list", "data": data}
