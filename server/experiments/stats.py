"""The statistics of an A/B report, from the recorded outcomes.

Per arm: n, mean / p50 / p95 latency with 95 % confidence intervals, error rate, feedback mean
with its interval. Against the control arm: the difference in mean latency and in mean feedback
with Welch's t-test, and Mann-Whitney U on latency (latency is skewed, so a rank test is the
safer reading). Across arms: a chi-square sample-ratio-mismatch check of the observed split
against the configured weights. scipy does the distributions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
SRM_ALPHA = 0.001  # the usual threshold: a mismatch this unlikely means broken assignment


@dataclass
class Interval:
    estimate: float | None
    low: float | None
    high: float | None


def mean_interval(values: list[float]) -> Interval:
    n = len(values)
    if n == 0:
        return Interval(None, None, None)
    mean = float(np.mean(values))
    if n < 2:
        return Interval(mean, None, None)
    sem = float(stats.sem(values))
    if sem == 0:
        return Interval(mean, mean, mean)
    low, high = stats.t.interval(CONFIDENCE, n - 1, loc=mean, scale=sem)
    return Interval(mean, float(low), float(high))


def quantile_interval(values: list[float], q: float) -> Interval:
    """Distribution-free interval for a quantile: order statistics picked by the binomial."""
    n = len(values)
    if n == 0:
        return Interval(None, None, None)
    ordered = np.sort(values)
    estimate = float(np.quantile(ordered, q))
    alpha = 1 - CONFIDENCE
    lo_rank = int(stats.binom.ppf(alpha / 2, n, q))
    hi_rank = int(stats.binom.ppf(1 - alpha / 2, n, q))
    low = float(ordered[max(lo_rank - 1, 0)]) if lo_rank >= 1 else None
    high = float(ordered[hi_rank]) if hi_rank < n else None
    return Interval(estimate, low, high)


def welch(a: list[float], b: list[float]) -> dict:
    """b minus a, with Welch's t-test p-value."""
    if len(a) < 2 or len(b) < 2:
        return {"difference": None, "p_value": None, "test": "welch_t"}
    result = stats.ttest_ind(b, a, equal_var=False)
    p = float(result.pvalue)
    return {
        "difference": float(np.mean(b) - np.mean(a)),
        "p_value": None if math.isnan(p) else p,
        "test": "welch_t",
    }


def mann_whitney(a: list[float], b: list[float]) -> dict:
    if not a or not b:
        return {"p_value": None, "test": "mann_whitney_u"}
    result = stats.mannwhitneyu(b, a, alternative="two-sided")
    return {"p_value": float(result.pvalue), "test": "mann_whitney_u"}


def sample_ratio_mismatch(counts: dict[str, int], weights: dict[str, float]) -> dict:
    total = sum(counts.values())
    if total == 0:
        return {"p_value": None, "mismatch": False}
    weight_sum = sum(weights.values())
    expected = [total * weights[arm] / weight_sum for arm in weights]
    observed = [counts.get(arm, 0) for arm in weights]
    p = float(stats.chisquare(observed, expected).pvalue)
    return {
        "p_value": p,
        "mismatch": p < SRM_ALPHA,
        "observed": dict(zip(weights, observed, strict=True)),
    }


def report(rows: list[dict], arms: dict[str, float], control: str) -> dict:
    """`rows` are outcome records; `arms` maps arm name to weight."""
    by_arm: dict[str, list[dict]] = {arm: [] for arm in arms}
    for row in rows:
        by_arm.setdefault(row["arm"], []).append(row)

    def latencies(arm: str) -> list[float]:
        return [
            r["latency_s"] for r in by_arm[arm] if not r["error"] and r["latency_s"] is not None
        ]

    def feedback(arm: str) -> list[float]:
        return [r["feedback"] for r in by_arm[arm] if r["feedback"] is not None]

    out_arms = {}
    for arm in by_arm:
        records = by_arm[arm]
        lat = latencies(arm)
        ttft = [r["ttft_s"] for r in records if r["ttft_s"] is not None and not r["error"]]
        entry = {
            "n": len(records),
            "errors": sum(1 for r in records if r["error"]),
            "latency_s": {
                "mean": asdict(mean_interval(lat)),
                "p50": asdict(quantile_interval(lat, 0.5)),
                "p95": asdict(quantile_interval(lat, 0.95)),
            },
            "ttft_s": {"mean": asdict(mean_interval(ttft))},
            "completion_tokens_mean": float(np.mean([r["completion_tokens"] for r in records]))
            if records
            else None,
            "feedback": {"n": len(feedback(arm)), "mean": asdict(mean_interval(feedback(arm)))},
        }
        if arm != control:
            entry["vs_control"] = {
                "latency_s": {
                    **welch(latencies(control), lat),
                    "rank": mann_whitney(latencies(control), lat),
                },
                "feedback": welch(feedback(control), feedback(arm)),
            }
        out_arms[arm] = entry
    counts = {arm: len(by_arm.get(arm, [])) for arm in arms}
    return {
        "control": control,
        "confidence": CONFIDENCE,
        "arms": out_arms,
        "sample_ratio_mismatch": sample_ratio_mismatch(counts, arms),
    }
