"""POST /v1/chat/completions and /v1/completions: thin HTTP, the work is in service.py."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from server.api_docs import ERROR_RESPONSES
from server.inference import service
from server.inference.protocol import ChatCompletionRequest, CompletionRequest
from server.state import State

router = APIRouter(prefix="/v1", tags=["inference"])


@router.post("/chat/completions", responses=ERROR_RESPONSES)
async def create_chat_completion(request: ChatCompletionRequest, state: State) -> Response:
    service.check_limits(request, state.settings.max_n)
    backend = state.registry.get(request.model)
    return await service.serve(request, "chat", "/v1/chat/completions", backend, state.metrics)


@router.post("/completions", responses=ERROR_RESPONSES)
async def create_completion(request: CompletionRequest, state: State) -> Response:
    service.check_limits(request, state.settings.max_n)
    backend = state.registry.get(request.model)
    return await service.serve(request, "completions", "/v1/completions", backend, state.metrics)
