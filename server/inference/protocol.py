"""OpenAI request models for /v1/chat/completions and /v1/completions.

Validation happens here, before any engine sees the request, so bad input gets a 400 naming the
field. Types are strict (a string is not a number). Unknown fields are accepted, logged, and
passed on to vLLM, which understands many extensions (top_k, min_p, ...).
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, model_validator

log = logging.getLogger("leanserve.protocol")


def _integer(value):
    """JSON has one number type: 8.0 is the integer 8 (JSON Schema agrees); 8.5, "8" and true
    are not integers."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Int = Annotated[int, BeforeValidator(_integer), Strict()]
Float = Annotated[float, Strict()]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class OpenAIModel(BaseModel):
    model_config = ConfigDict(extra="allow")

    @model_validator(mode="after")
    def _log_unknown_fields(self):
        if self.model_extra:
            log.info(
                "%s: passing unknown fields on: %s", type(self).__name__, sorted(self.model_extra)
            )
        return self


class StreamOptions(OpenAIModel):
    include_usage: Bool | None = None
    continuous_usage_stats: Bool | None = None


class ChatMessage(OpenAIModel):
    role: Role
    content: Str | list[dict[str, Any]] | None = None
    name: Str | None = None


class SamplingFields(OpenAIModel):
    """Fields shared by chat and text completions."""

    model: Str = Field(min_length=1, examples=["smollm2-135m-instruct"])
    max_tokens: Int | None = Field(default=None, ge=1)
    temperature: Float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: Float | None = Field(default=None, gt=0.0, le=1.0)
    n: Int | None = Field(default=None, ge=1)
    stop: Str | list[Str] | None = None
    seed: Int | None = None
    stream: Bool | None = False
    stream_options: StreamOptions | None = None
    user: Str | None = None
    presence_penalty: Float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: Float | None = Field(default=None, ge=-2.0, le=2.0)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Int | None = Field(default=None, ge=1)
    logprobs: Bool | None = None
    top_logprobs: Int | None = Field(default=None, ge=0, le=20)


class CompletionRequest(SamplingFields):
    prompt: Str | list[Str] | list[Int] | list[list[Int]]
    logprobs: Int | None = Field(default=None, ge=0, le=5)
    echo: Bool | None = None

    @model_validator(mode="after")
    def _prompt_not_empty(self):
        prompt = self.prompt
        if (
            prompt == ""
            or prompt == []
            or (isinstance(prompt, list) and any(p in ("", []) for p in prompt))
        ):
            raise ValueError("prompt must not be empty")
        return self


InferenceRequest = ChatCompletionRequest | CompletionRequest
