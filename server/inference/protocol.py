"""OpenAI request models for /v1/chat/completions and /v1/completions.

Validation happens here, before any engine sees the request, so bad input gets a 400 naming the
field. Types are strict (a string is not a number). The fields are an allow-list: OpenAI's, and
the vLLM extensions leanserve relays (top_k, min_p, ignore_eos, ...), each bounded. Any other
field is refused with a 400 naming it: vLLM would act on many of them (chat_template,
kv_transfer_params, prompt_embeds, priority ...). Messages alone may carry extra fields, since
SDKs send a reply's message back as it came (refusal, annotations, tool_calls ...).
Features with a cost the operator should choose (structured outputs, prompt logprobs) are
modelled here and allowed by settings in request_limits.py.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    model_validator,
)

log = logging.getLogger("leanserve.protocol")

MAX_STOP = 4  # OpenAI's limit
MAX_STOP_CHARS = 256
MAX_STOP_TOKEN_IDS = 64
MAX_LOGIT_BIAS = 300  # OpenAI's limit
MAX_ALLOWED_TOKEN_IDS = 1024


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
TokenId = Annotated[int, BeforeValidator(_integer), Strict(), Field(ge=0, le=2**31 - 1)]
TokenKey = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,10}$")]  # a token id, as text
Bias = Annotated[float, Field(ge=-100, le=100)]


def _bounded_stop(value: str | list[str]) -> str | list[str]:
    stops = [value] if isinstance(value, str) else value
    if len(stops) > MAX_STOP:
        raise ValueError(f"at most {MAX_STOP} stop sequences")
    if any(len(stop) > MAX_STOP_CHARS for stop in stops):
        raise ValueError(f"a stop sequence has at most {MAX_STOP_CHARS} characters")
    return value


Stop = Annotated[Str | list[Str], AfterValidator(_bounded_stop)]

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class OpenAIModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(OpenAIModel):
    include_usage: Bool | None = None
    continuous_usage_stats: Bool | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Role
    content: Str | list[dict[str, Any]] | None = None
    name: Str | None = None

    @model_validator(mode="after")
    def _log_extra_fields(self):
        if self.model_extra:
            # Caller-chosen names: a count and a few, cut short, never the whole list.
            names = [name[:32] for name in list(self.model_extra)[:3]]
            log.debug("message with %d extra fields, e.g. %s", len(self.model_extra), names)
        return self


class SamplingFields(OpenAIModel):
    """Fields shared by chat and text completions."""

    model: Str = Field(min_length=1, examples=["smollm2-135m-instruct"])
    max_tokens: Int | None = Field(default=None, ge=1)
    temperature: Float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: Float | None = Field(default=None, gt=0.0, le=1.0)
    n: Int | None = Field(default=None, ge=1)
    stop: Stop | None = Field(default=None, description=f"At most {MAX_STOP}, of at most "
        f"{MAX_STOP_CHARS} characters each.")  # fmt: skip
    seed: Int | None = None
    stream: Bool | None = False
    stream_options: StreamOptions | None = None
    user: Str | None = None
    presence_penalty: Float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: Float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[TokenKey, Bias] | None = Field(default=None, max_length=MAX_LOGIT_BIAS)
    response_format: dict[str, Any] | None = Field(
        default=None, description="{'type': 'text'}; json_object and json_schema need "
        "limits.allow_structured_outputs.",
    )  # fmt: skip
    # leanserve's own: the routing policy, for SDKs' extra_body (a header works too).
    leanserve_policy: Str | None = Field(default=None, max_length=32)
    # vLLM extensions leanserve relays.
    top_k: Int | None = Field(default=None, ge=-1)
    min_p: Float | None = Field(default=None, ge=0.0, le=1.0)
    repetition_penalty: Float | None = Field(default=None, gt=0.0, le=2.0)
    min_tokens: Int | None = Field(default=None, ge=0)
    ignore_eos: Bool | None = None
    skip_special_tokens: Bool | None = None
    spaces_between_special_tokens: Bool | None = None
    include_stop_str_in_output: Bool | None = None
    stop_token_ids: list[TokenId] | None = Field(default=None, max_length=MAX_STOP_TOKEN_IDS)
    allowed_token_ids: list[TokenId] | None = Field(
        default=None, min_length=1, max_length=MAX_ALLOWED_TOKEN_IDS
    )
    # vLLM extensions behind settings (request_limits.py).
    structured_outputs: dict[str, Any] | None = Field(
        default=None, description="Needs limits.allow_structured_outputs."
    )
    prompt_logprobs: Int | None = Field(
        default=None, ge=0, le=20, description="Needs limits.allow_prompt_logprobs."
    )


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

# Fields some clients send that leanserve refuses, with what to do instead.
FIELD_HINTS = {
    "max_completion_tokens": "/v1/completions takes max_tokens",
    **{
        f"guided_{kind}": "structured outputs are sent as structured_outputs or response_format, "
        "and need limits.allow_structured_outputs"
        for kind in ("json", "regex", "choice", "grammar", "decoding_backend", "whitespace_pattern")
    },
}
