"""The checks on an inference request that depend on this server's settings, before any engine
sees it: n and prompts x n (max_n, limits.max_prompts), generated tokens (limits.max_tokens,
whichever of max_tokens and max_completion_tokens is larger), and the features an operator
turns on (limits.allow_structured_outputs, limits.allow_prompt_logprobs)."""

from __future__ import annotations

from typing import NoReturn

from server.errors import bad_request
from server.inference.protocol import CompletionRequest, InferenceRequest
from server.settings import Settings


def prompt_count(request: CompletionRequest) -> int:
    """A string or a list of token ids is one prompt; a list of either is many."""
    prompt = request.prompt
    if isinstance(prompt, str) or isinstance(prompt[0], int):
        return 1
    return len(prompt)


def asked_tokens(request: InferenceRequest) -> tuple[int | None, str]:
    """The larger of max_tokens and max_completion_tokens, and the field it came in."""
    asked, field = request.max_tokens, "max_tokens"
    completion = getattr(request, "max_completion_tokens", None)
    if completion is not None and (asked is None or completion > asked):
        asked, field = completion, "max_completion_tokens"
    return asked, field


def check_request(request: InferenceRequest, settings: Settings) -> None:
    limits, max_n = settings.limits, settings.max_n
    n = request.n or 1
    if n > max_n:
        raise bad_request(f"n={n} is above this server's limit of {max_n}.", "n", "n_too_large")
    if isinstance(request, CompletionRequest):
        prompts = prompt_count(request)
        if prompts > limits.max_prompts:
            raise bad_request(
                f"{prompts} prompts in one request; this server takes at most "
                f"{limits.max_prompts} (limits.max_prompts).",
                "prompt",
                "too_many_prompts",
            )
        if prompts * n > max_n:
            raise bad_request(
                f"{prompts} prompts x n={n} asks for {prompts * n} sequences; this server "
                f"generates at most {max_n} per request.",
                "n",
                "n_too_large",
            )
    asked, field = asked_tokens(request)
    cap = limits.max_tokens
    if cap is not None and asked is not None and asked > cap:
        raise bad_request(f"{field}={asked} is above this server's limit of {cap}.", field)
    _check_features(request, settings)


def _check_features(request: InferenceRequest, settings: Settings) -> None:
    if not settings.limits.allow_structured_outputs:
        response_format = request.response_format
        if request.structured_outputs is not None:
            _disabled("structured_outputs", "Structured outputs", "allow_structured_outputs")
        if response_format is not None and response_format.get("type") != "text":
            _disabled("response_format", "Structured outputs", "allow_structured_outputs")
    if request.prompt_logprobs is not None and not settings.limits.allow_prompt_logprobs:
        _disabled("prompt_logprobs", "prompt_logprobs", "allow_prompt_logprobs")


def _disabled(param: str, what: str, setting: str) -> NoReturn:
    raise bad_request(
        f"{what} are off on this server (limits.{setting}).", param, f"{param}_disabled"
    )
