"""Read an answer back teacher-forced: the token ids of prompt + answer, and one engine's
log-probabilities at each answer position (vLLM's prompt_logprobs on /v1/completions).

The client's request is never changed to return token ids (that would change its answer's
body), so the ids come from the engine's /tokenize afterwards: the prompt as the engine
rendered it (chat template and generation prompt), then prompt and answer together, tokenized
in context, as the model read its own answer. The answer's ids are what follows the prompt's.
Re-tokenizing text need not give back the exact ids that were sampled (a model may emit a
non-canonical split); both models read the same ids, so the comparison stays like for like.
"""

from __future__ import annotations

from server.backends.engine_client import EngineClient
from server.inference.protocol import ChatCompletionRequest
from server.quality.capture import Answer
from server.quality.compare import Position, positions


class ScoringError(Exception):
    """An answer (or one comparison of it) that was not scored; `reason` is the dropped
    counter's label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


async def token_ids(
    client: EngineClient, model: str, answer: Answer, text: str
) -> tuple[list[int], int]:
    """Prompt and answer as one list of token ids, and the index where the answer starts."""
    request = answer.request
    if isinstance(request, ChatCompletionRequest):
        messages = request.model_dump(exclude_unset=True)["messages"]
        prefix = await _tokenize(client, model, messages=messages, add_generation_prompt=True)
        whole = await _tokenize(
            client,
            model,
            messages=[*messages, {"role": "assistant", "content": text}],
            add_generation_prompt=False,
            continue_final_message=True,  # the answer as the model read it: no end tag after
        )
    elif isinstance(request.prompt, str):
        prefix = await _tokenize(client, model, prompt=request.prompt)
        whole = await _tokenize(client, model, prompt=request.prompt + text)
    else:  # token ids: the engine read them as they are
        prefix = list(request.prompt)
        whole = prefix + await _tokenize(client, model, prompt=text, add_special_tokens=False)
    if whole[: len(prefix)] != prefix or len(whole) <= len(prefix):
        # The template renders the conversation differently once the answer is in it, or the
        # answer's first token merged with the prompt's last: no clean boundary to score from.
        raise ScoringError("mismatch", f"{len(prefix)} prompt ids, {len(whole)} in all")
    return whole, len(prefix)


async def read_back(
    client: EngineClient, model: str, ids: list[int], start: int, k: int
) -> list[Position]:
    """The engine's top-`k` log-probabilities at each position from `start` of `ids`."""
    body = {
        "model": model,
        "prompt": ids,
        "max_tokens": 1,  # prompt_logprobs come with a completion: the shortest one
        "temperature": 0,
        "prompt_logprobs": k,
    }
    reply = await client.complete("/v1/completions", body)
    if reply.status != 200:
        raise ScoringError("failed", f"{model} answered {reply.status}")
    return positions(reply.json()["choices"][0]["prompt_logprobs"], start, k)


async def _tokenize(client: EngineClient, model: str, **body: object) -> list[int]:
    reply = await client.tokenize({"model": model, **body})
    if reply.status != 200:
        raise ScoringError("failed", f"/tokenize answered {reply.status}")
    return list(reply.json()["tokens"])
