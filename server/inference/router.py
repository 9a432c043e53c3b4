"""POST /v1/chat/completions and /v1/completions: thin HTTP, the work is in service.py."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from server.api_docs import ERROR_RESPONSES
from server.auth import ApiKey, RateLimited
from server.inference import service
from server.inference.protocol import ChatCompletionRequest, CompletionRequest
from server.state import State

router = APIRouter(prefix="/v1", tags=["inference"], dependencies=[ApiKey, RateLimited])


@router.post("/chat/completions", responses=ERROR_RESPONSES)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, state: State
) -> Response:
    return await service.serve(body, "chat", "/v1/chat/completions", state, request)


@router.post("/completions", responses=ERROR_RESPONSES)
async def create_completion(body: CompletionRequest, request: Request, state: State) -> Response:
    return await service.serve(body, "completions", "/v1/completions", state, request)
