"""Two models on the same answer from vLLM's prompt_logprobs (the shape vLLM 0.32's
/v1/completions returns): top-1 agreement per position, and the top-k KL approximation."""

from __future__ import annotations

import math

import pytest

from server.quality.compare import Position, compare, kl_top_k, positions


def entry(probs: dict[int, float], actual: int | None = None, actual_p: float = 1e-4) -> dict:
    """One position as vLLM returns it: top tokens by rank, plus the actual token if outside."""
    ranked = sorted(probs.items(), key=lambda kv: -kv[1])
    out = {
        str(t): {"logprob": math.log(p), "rank": i + 1, "decoded_token": f"t{t}"}
        for i, (t, p) in enumerate(ranked)
    }
    if actual is not None and str(actual) not in out:
        out[str(actual)] = {"logprob": math.log(actual_p), "rank": 900, "decoded_token": "x"}
    return out


def test_positions_read_the_answer_part_of_prompt_logprobs():
    prompt_logprobs = [None, entry({1: 0.9, 2: 0.1}), entry({5: 0.6, 6: 0.3}, actual=7)]
    got = positions(prompt_logprobs, start=1, k=2)
    assert [p.top1 for p in got] == [1, 5]
    assert got[1].logprobs[7] == pytest.approx(math.log(1e-4)), "the actual token is kept"
    assert got[1].kth == pytest.approx(math.log(0.3)), "k-th of the top-k, not the actual token"
    with pytest.raises(ValueError):
        positions(prompt_logprobs, start=0, k=2)  # position 0 has none: not an answer position


def test_top1_comes_from_the_rank_not_the_order():
    e = {"9": {"logprob": -3.0, "rank": 2}, "4": {"logprob": -0.1, "rank": 1}}
    assert positions([e], 0, 2)[0].top1 == 4


def test_agreement_counts_positions_whose_most_likely_tokens_match():
    base = positions([entry({1: 0.7, 2: 0.3}), entry({3: 0.5, 4: 0.4}), entry({5: 0.9})], 0, 2)
    variant = positions([entry({1: 0.6, 2: 0.4}), entry({4: 0.5, 3: 0.4}), entry({5: 0.8})], 0, 2)
    c = compare(base, variant)
    assert (c.tokens, c.agree) == (3, 2)
    with pytest.raises(ValueError):
        compare(base, variant[:2])


def test_kl_of_identical_distributions_is_zero():
    p = positions([entry({1: 0.5, 2: 0.3, 3: 0.15})], 0, 3)[0]
    assert kl_top_k(p, p) == pytest.approx(0.0, abs=1e-12)


def test_kl_matches_the_exact_value_when_the_top_k_is_everything():
    p = {1: 0.6, 2: 0.3, 3: 0.1}
    q = {1: 0.3, 2: 0.5, 3: 0.2}
    exact = sum(p[t] * math.log(p[t] / q[t]) for t in p)
    got = kl_top_k(positions([entry(p)], 0, 3)[0], positions([entry(q)], 0, 3)[0])
    assert got == pytest.approx(exact, rel=1e-9)


def test_kl_over_the_top_k_is_close_when_the_tail_is_small():
    # A 50-token vocabulary; each model returns only its top 20.
    p = [0.5, 0.2, 0.1] + [0.2 / 47] * 47
    q = [0.3, 0.3, 0.15] + [0.25 / 47] * 47
    exact = sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))

    def top20(dist: list[float]) -> Position:
        return positions([entry(dict(list(enumerate(dist))[:20]))], 0, 20)[0]

    got = kl_top_k(top20(p), top20(q))
    assert got == pytest.approx(exact, rel=0.05), (got, exact)


def test_a_token_the_variant_did_not_return_gets_its_kth_probability():
    base = positions([entry({1: 0.6, 2: 0.4})], 0, 2)[0]
    variant = Position({3: math.log(0.7), 4: math.log(0.2)}, top1=3, kth=math.log(0.2))
    # p = 0.6, 0.4 on tokens 1, 2 (the tail 0); q stands in at 0.2 for each.
    expected = 0.6 * math.log(0.6 / 0.2) + 0.4 * math.log(0.4 / 0.2)
    assert kl_top_k(base, variant) == pytest.approx(expected)
