"""Compare two models on the same answer, position by position, from vLLM's prompt_logprobs.

Each engine read the same token ids teacher-forced (prompt + answer) and returned, for every
position, the log-probabilities of its top-k tokens and of the token actually there. From
these, per answer position: do the two models' most likely tokens agree (top-1 agreement), and
how far apart are their distributions (KL(base || variant), nats, as the card's kl_to_base).

KL over the top-k is an approximation, not a bound. It is computed over k + 1 outcomes: the
base's returned tokens one by one, and everything else as one outcome. A token of the base's
that the variant did not return gets the variant's k-th largest probability, the most it can
have. Merging the tail into one outcome lowers KL (log-sum inequality); the stand-in
probabilities lower the top-k terms and raise the tail's. With k = 20 the base's top-20 hold
nearly all the probability at most positions of a chat answer, so the tail matters little.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

TAIL_FLOOR = 1e-6  # the variant's tail mass, at least: stand-ins may leave it at or below 0


@dataclass(frozen=True)
class Position:
    """One model's view of one position: the log-probabilities it returned, its most likely
    token, and its k-th largest log-probability (an upper bound for any token not returned)."""

    logprobs: dict[int, float]
    top1: int
    kth: float


@dataclass(frozen=True)
class Comparison:
    """Two models on one answer: `agree` of `tokens` positions agree; KL summed over them."""

    tokens: int
    agree: int
    kl_sum: float


def positions(prompt_logprobs: list[dict | None], start: int, k: int) -> list[Position]:
    """The answer's positions (from `start`) of a completions choice's `prompt_logprobs`:
    a list over the prompt's tokens of {token id: {"logprob", "rank", ...}} (the first None)."""
    out = []
    for entry in prompt_logprobs[start:]:
        if not entry:
            raise ValueError("a position without log-probabilities")
        logprobs = {int(token): float(value["logprob"]) for token, value in entry.items()}
        ranked = [int(t) for t, v in entry.items() if v.get("rank") == 1]
        top1 = ranked[0] if ranked else max(logprobs, key=logprobs.__getitem__)
        top_k = sorted(logprobs.values(), reverse=True)[:k]
        out.append(Position(logprobs, top1, top_k[-1]))
    return out


def kl_top_k(base: Position, variant: Position) -> float:
    """KL(base || variant) at one position over the base's returned tokens and the rest."""
    kl, p_top, q_top = 0.0, 0.0, 0.0
    for token, lp in base.logprobs.items():
        lq = min(variant.logprobs.get(token, variant.kth), 0.0)
        p = math.exp(lp)
        kl += p * (lp - lq)
        p_top += p
        q_top += math.exp(lq)
    p_rest = 1.0 - p_top
    if p_rest > 0:
        kl += p_rest * math.log(p_rest / max(1.0 - q_top, TAIL_FLOOR))
    return max(kl, 0.0)


def compare(base: list[Position], variant: list[Position]) -> Comparison:
    """Both models over the same answer positions."""
    if len(base) != len(variant):
        raise ValueError(f"{len(base)} positions against {len(variant)}")
    agree = sum(b.top1 == v.top1 for b, v in zip(base, variant, strict=True))
    kl = sum(kl_top_k(b, v) for b, v in zip(base, variant, strict=True))
    return Comparison(len(base), agree, kl)
