"""A variant's running live figures: pooled agreement and KL, and an interval that holds its
95 % coverage when positions within a request are not independent."""

from __future__ import annotations

import math
import random

import pytest

from server.quality.live import Z95, LiveQuality


def test_figures_pool_positions_over_requests():
    live = LiveQuality()
    assert live.view() == {
        "n": 0, "tokens": 0, "top1_agreement": None, "kl": None, "ci95": None, "since": None,
    }  # fmt: skip
    live.add(tokens=10, agree=9, kl_sum=0.5, now=1000.0)
    assert live.ci95() is None, "one request says nothing about the spread between requests"
    live.add(tokens=30, agree=21, kl_sum=1.5, now=2000.0)
    assert live.n == 2 and live.top1_agreement == 30 / 40 and live.kl == 2.0 / 40
    view = live.view()
    assert view["since"] == 1000.0, "the first scored request"
    lo, hi = view["ci95"]
    assert lo < 0.75 < hi


def test_an_empty_answer_is_not_a_request():
    live = LiveQuality()
    live.add(tokens=0, agree=0, kl_sum=0.0)
    assert live.n == 0 and live.since is None


def test_interval_matches_the_clustered_formula():
    live = LiveQuality()
    data = [(10, 9), (20, 15), (5, 5), (40, 30)]
    for t, a in data:
        live.add(t, a, 0.0)
    r = sum(a for _, a in data) / sum(t for t, _ in data)
    n = len(data)
    var = n / (n - 1) * sum((a - r * t) ** 2 for t, a in data) / sum(t for t, _ in data) ** 2
    lo, hi = live.ci95()
    assert lo == pytest.approx(r - Z95 * math.sqrt(var))
    assert hi == pytest.approx(min(1.0, r + Z95 * math.sqrt(var)))


def simulate(rng: random.Random, requests: int, spread: bool) -> LiveQuality:
    """Requests of 5-40 positions; each request's agreement rate is 0.85 (spread=False) or
    drawn from Beta(4.25, 0.75) (mean 0.85; some requests diverge early and disagree a lot)."""
    live = LiveQuality()
    for _ in range(requests):
        tokens = rng.randint(5, 40)
        p = rng.betavariate(4.25, 0.75) if spread else 0.85
        live.add(tokens, sum(rng.random() < p for _ in range(tokens)), 0.0)
    return live


@pytest.mark.parametrize("spread", [False, True], ids=["independent", "clustered"])
def test_interval_covers_the_truth_95_percent_of_the_time(spread):
    rng = random.Random(15)
    runs, covered, naive_covered = 400, 0, 0
    for _ in range(runs):
        live = simulate(rng, 60, spread)
        lo, hi = live.ci95()
        covered += lo <= 0.85 <= hi
        # The interval a binomial over positions would give (positions independent).
        r = live.top1_agreement
        half = Z95 * math.sqrt(r * (1 - r) / live.tokens)
        naive_covered += r - half <= 0.85 <= r + half
    # Measured over seeds: 0.95 independent, 0.92-0.94 clustered (the normal approximation of a
    # ratio at 60 skewed requests runs a little short).
    assert 0.90 <= covered / runs <= 0.98, covered / runs
    if spread:
        # The premise: counting positions as independent claims far too much certainty.
        assert naive_covered / runs < 0.75, naive_covered / runs
