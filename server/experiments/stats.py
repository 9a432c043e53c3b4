"""The statistics of an A/B report, from the recorded outcomes.

Per arm: n, mean / p50 / p95 latency with 95 % confidence intervals, error rate, feedback mean
with its interval. Against the control arm, on latency, TTFT and feedback: always-valid figures
(sequential.py: a p-value and a confidence sequence that stay valid however often the report is
read, a decision and the minimum detectable effect), and the fixed-horizon ones: Welch's t-test,
and Mann-Whitney U on latency and TTFT (skewed, so a rank test is the safer reading); those hold
only when read once, at a sample size fixed in advance. Across arms: a chi-square
sample-ratio-mismatch check of the observed split against the configured weights.
`guardrail_breach` tells whether an arm is shown worse than the control by more than a margin.
scipy does the distributions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from server.experiments import sequential

CONFIDENCE = 1 - sequential.ALPHA
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
    p = float(stats.mannwhitneyu(b, a, alternative="two-sided").pvalue)
    return {"p_value": None if math.isnan(p) else p, "test": "mann_whitney_u"}


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


FIXED_HORIZON_NOTE = (
    "valid only when read once, at a sample size fixed in advance: reading them as data arrive"
    " and stopping at the first p < 0.05 inflates the false-positive rate well past 5 %;"
    " use always_valid_p and confidence_sequence for that"
)


def versus(control: list[float], arm: list[float], higher_is_better: bool, rank: bool) -> dict:
    """Arm against control on one metric. The top-level `difference` / `p_value` / `test` (and
    `rank`) are the fixed-horizon figures of earlier reports, kept for their readers; the same
    p-values sit under `fixed_horizon` with the warning."""
    fixed_t = welch(control, arm)
    out = {**fixed_t}
    fixed = {"welch_t_p": fixed_t["p_value"]}
    if rank:
        out["rank"] = mann_whitney(control, arm)
        fixed["mann_whitney_u_p"] = out["rank"]["p_value"]
    out["fixed_horizon"] = {**fixed, "note": FIXED_HORIZON_NOTE}
    out.update(sequential.summary(sequential.compare(control, arm), higher_is_better))
    return out


def _split(rows: list[dict], arms) -> dict[str, list[dict]]:
    by_arm: dict[str, list[dict]] = {arm: [] for arm in arms}
    for row in rows:
        by_arm.setdefault(row["arm"], []).append(row)
    return by_arm


def _latencies(records: list[dict]) -> list[float]:
    return [r["latency_s"] for r in records if not r["error"] and r["latency_s"] is not None]


def _ttfts(records: list[dict]) -> list[float]:
    return [r["ttft_s"] for r in records if not r["error"] and r["ttft_s"] is not None]


def _feedback(records: list[dict]) -> list[float]:
    return [r["feedback"] for r in records if r["feedback"] is not None]


def report(rows: list[dict], arms: dict[str, float], control: str) -> dict:
    """`rows` are outcome records; `arms` maps arm name to weight."""
    by_arm = _split(rows, arms)
    base = by_arm.get(control, [])
    out_arms = {}
    for arm, records in by_arm.items():
        lat, ttft, feedback = _latencies(records), _ttfts(records), _feedback(records)
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
            "feedback": {"n": len(feedback), "mean": asdict(mean_interval(feedback))},
        }
        if arm != control:
            entry["vs_control"] = {
                "latency_s": versus(_latencies(base), lat, higher_is_better=False, rank=True),
                "ttft_s": versus(_ttfts(base), ttft, higher_is_better=False, rank=True),
                "feedback": versus(_feedback(base), feedback, higher_is_better=True, rank=False),
            }
        out_arms[arm] = entry
    counts = {arm: len(by_arm.get(arm, [])) for arm in arms}
    return {
        "control": control,
        "confidence": CONFIDENCE,
        "always_valid": {
            "alpha": sequential.ALPHA,
            "tau_sd": sequential.TAU_SD,
            "min_n": sequential.MIN_N,
            "mde": sequential.MDE_DEFINITION,
        },
        "arms": out_arms,
        "sample_ratio_mismatch": sample_ratio_mismatch(counts, arms),
    }


GUARDRAIL_METRICS = ("error_rate", "ttft_p95", "latency", "feedback")


@dataclass
class Breach:
    """An arm shown worse than the control by more than the margin. `estimate`, `low`, `high`:
    arm minus control and its always-valid confidence sequence, in the unit of what was tested
    (see guardrail_breach); `threshold`: the margin in that unit."""

    metric: str
    estimate: float
    low: float
    high: float
    threshold: float
    reason: str


def guardrail_breach(
    rows: list[dict], control: str, arm: str, metric: str, margin: float
) -> Breach | None:
    """Whether `arm` is shown, by the always-valid test at CONFIDENCE, worse than `control` by
    more than `margin`; a Breach saying how, else None (also while either side has fewer than
    sequential.MIN_N values). Pure: rows are those report() gets. Being always-valid, it may be
    called as often as wanted without raising the false-alarm rate.

    - error_rate: share of rows with an error. `margin` absolute (0.05 = 5 points more errors).
    - latency: mean latency_s of successful requests. `margin` relative (0.1 = 10 % slower):
      the confidence sequence is built for arm - (1 + margin) * control, so the control mean's
      own noise counts; it is reported shifted back by margin * control mean.
    - ttft_p95: `margin` relative. Breached when the arm's p95 TTFT is shown above (1 + margin)
      times the control's: the arm's share of requests slower than (1 + margin) * the control's
      running p95 is compared with the control's share above that p95 (5 % by construction,
      its binomial noise standing for the noise of the estimated p95: exact to first order when
      the arm is the control slowed by a constant factor). Keep margin > 0. Tests the tail
      itself, which a mean would dilute.
    - feedback: mean score. `margin` absolute (0.5 = half a point lower).
    """
    if metric not in GUARDRAIL_METRICS:
        raise ValueError(f"metric must be one of {GUARDRAIL_METRICS}, not {metric!r}")
    if not (margin >= 0 and math.isfinite(margin)):
        raise ValueError(f"margin must be a finite number >= 0, not {margin!r}")
    by_arm = _split(rows, [control, arm])
    base, records = by_arm[control], by_arm[arm]
    level = f"always-valid {CONFIDENCE:.0%}"
    if metric == "error_rate":
        c = [bool(r["error"]) for r in base]
        a = [bool(r["error"]) for r in records]
        found = sequential.compare(c, a, binary=True)
        if found is None or found.low <= margin:
            return None
        reason = (
            f"error rate {np.mean(a):.2f} vs control {np.mean(c):.2f},"
            f" worse by more than {margin:.2f} ({level})"
        )
        return Breach(metric, found.difference, found.low, found.high, margin, reason)
    if metric == "feedback":
        c, a = _feedback(base), _feedback(records)
        found = sequential.compare(c, a)
        if found is None or found.high >= -margin:
            return None
        reason = (
            f"feedback {np.mean(a):.2f} vs control {np.mean(c):.2f},"
            f" worse by more than {margin:.2f} ({level})"
        )
        return Breach(metric, found.difference, found.low, found.high, -margin, reason)
    if metric == "latency":
        c, a = _latencies(base), _latencies(records)
        found = sequential.compare([(1 + margin) * x for x in c], a)
        if found is None or found.low <= 0:
            return None
        shift = margin * float(np.mean(c))
        reason = (
            f"mean latency {np.mean(a):.3f} s vs control {np.mean(c):.3f} s,"
            f" slower by more than {margin:.0%} ({level})"
        )
        return Breach(
            metric, found.difference + shift, found.low + shift, found.high + shift, shift, reason
        )
    c, a = _ttfts(base), _ttfts(records)
    if len(c) < sequential.MIN_N:
        return None
    p95 = float(np.quantile(c, 0.95))
    limit = (1 + margin) * p95
    c_above = [x > p95 for x in c]
    a_above = [x > limit for x in a]
    found = sequential.compare(c_above, a_above, binary=True)
    if found is None or found.low <= 0:
        return None
    reason = (
        f"ttft p95 {np.quantile(a, 0.95):.3f} s vs control {p95:.3f} s: {np.mean(a_above):.0%}"
        f" of the arm's requests take over {limit:.3f} s ({1 + margin:.2f} x the control's p95),"
        f" against {np.mean(c_above):.0%} of the control's over its p95 ({level})"
    )
    return Breach(metric, found.difference, found.low, found.high, 0.0, reason)
