"""GET /v1/models: the names a client can put in `model`."""

from __future__ import annotations

import time

from fastapi import APIRouter

from server.state import State

router = APIRouter(prefix="/v1", tags=["models"])
_CREATED = int(time.time())


@router.get("/models")
async def list_models(state: State) -> dict:
    data = [
        {
            "id": backend.name,
            "object": "model",
            "created": _CREATED,
            "owned_by": "leanserve",
            "ready": backend.ready,
            "state": str(backend.engine.state),
            "card": backend.card,
        }
        for backend in state.registry.backends.values()
    ]
    return {"object": "list", "data": data}
