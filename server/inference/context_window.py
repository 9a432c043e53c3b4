"""Refuse a request whose prompt and max_tokens do not fit the model's context window (vLLM
would silently cut the output short)."""

from __future__ import annotations

import json

from server.backends.engine_client import EngineError
from server.backends.registry import Backend
from server.errors import bad_request
from server.inference.forward import transport_error, upstream_error
from server.inference.protocol import ChatCompletionRequest, InferenceRequest


def prompt_token_bound(request: InferenceRequest) -> int:
    """An upper bound on prompt tokens: byte-level BPE makes every token at least one byte,
    plus room for the chat template. Cheap enough to run on every request."""
    if isinstance(request, ChatCompletionRequest):
        text = sum(len(json.dumps(m.content).encode()) for m in request.messages)
        return text + 16 * len(request.messages) + 64
    prompts = request.prompt if isinstance(request.prompt, list) else [request.prompt]
    return max(len(p) if isinstance(p, list) else len(p.encode()) for p in prompts) + 8


async def check_context(request: InferenceRequest, backend: Backend) -> None:
    """Only requests that might not fit pay for an exact count through the engine's /tokenize."""
    wanted = getattr(request, "max_completion_tokens", None) or request.max_tokens
    if wanted is None:
        return
    limit = await backend.context_window()
    if limit is None or prompt_token_bound(request) + wanted <= limit:
        return
    if isinstance(request, ChatCompletionRequest):
        body = {
            "model": backend.name,
            "messages": request.model_dump(exclude_unset=True)["messages"],
        }
        body["add_generation_prompt"] = True
    else:
        prompt = request.prompt
        prompts = (
            [prompt]
            if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int))
            else prompt
        )
        counts = [len(p) if isinstance(p, list) else None for p in prompts]
        if None not in counts:
            return _refuse(max(counts), wanted, limit)
        body = {"model": backend.name, "prompt": max(prompts, key=len)}
    try:
        reply = await backend.client.tokenize(body)
    except EngineError as exc:
        raise transport_error(exc, backend) from exc
    if reply.status != 200:
        raise upstream_error(reply.status, reply.content)
    _refuse(reply.json()["count"], wanted, limit)


def _refuse(prompt_tokens: int, wanted: int, limit: int) -> None:
    if prompt_tokens + wanted > limit:
        raise bad_request(
            f"This model's context window is {limit} tokens, but the request asks for "
            f"{prompt_tokens + wanted} ({prompt_tokens} in the prompt, {wanted} to generate). "
            "Shorten the prompt or lower max_tokens.",
            "max_tokens",
            "context_length_exceeded",
        )
