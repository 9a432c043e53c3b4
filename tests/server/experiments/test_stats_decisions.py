"""The always-valid figures of the report (decision, mde, confidence sequence), the guardrail
check, and a report that is always plain JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import integrate
from scipy import stats as sps

from server.experiments import sequential, stats


def _rows(arm: str, latency, feedback=None, errors=None) -> list[dict]:
    n = len(latency)
    feedback = [None] * n if feedback is None else feedback
    errors = [False] * n if errors is None else errors
    return [
        {
            "arm": arm,
            "latency_s": x,
            "ttft_s": x / 4,
            "error": "engine_error" if e else None,
            "feedback": f,
            "completion_tokens": 8,
            "created_at": 1.0 + i,
        }
        for i, (x, f, e) in enumerate(zip(latency, feedback, errors, strict=True))
    ]


def _mixture_by_integration(diff: float, var: float, tau2: float) -> float:
    """Lambda straight from its definition: the likelihood ratio of theta against 0 for
    d ~ N(theta, var), averaged over theta ~ N(0, tau2)."""
    scale = math.sqrt(tau2)

    def integrand(theta: float) -> float:
        ratio = sps.norm.pdf(diff, theta, math.sqrt(var)) / sps.norm.pdf(diff, 0, math.sqrt(var))
        return ratio * sps.norm.pdf(theta, 0, scale)

    return integrate.quad(integrand, -12 * scale, 12 * scale, points=[diff])[0]


def test_closed_form_is_the_normal_mixture():
    rng = np.random.default_rng(0)
    control, arm = rng.normal(1.0, 0.3, 400), rng.normal(1.05, 0.3, 300)
    found = sequential.compare(control, arm)
    var = np.var(arm, ddof=1) / 300 + np.var(control, ddof=1) / 400
    tau2 = sequential.TAU_SD**2 * (np.var(arm, ddof=1) + np.var(control, ddof=1)) / 2
    mixture = _mixture_by_integration(found.difference, var, tau2)
    assert found.always_valid_p == pytest.approx(min(1.0, 1 / mixture), rel=1e-6)
    # At either end of the confidence sequence the test sits exactly at 1 / alpha.
    for end in (found.low, found.high):
        shifted = _mixture_by_integration(found.difference - end, var, tau2)
        assert shifted == pytest.approx(1 / sequential.ALPHA, rel=1e-6)


def test_decisions_follow_the_direction_of_better():
    rng = np.random.default_rng(1)
    n = 600
    rows = (
        _rows("control", list(rng.lognormal(0, 0.3, n)), list(rng.normal(3.0, 1, n)))
        + _rows("faster", list(rng.lognormal(-0.3, 0.3, n)), list(rng.normal(2.5, 1, n)))
        + _rows("same", list(rng.lognormal(0, 0.3, n)), list(rng.normal(3.0, 1, n)))
        + _rows("slower", list(rng.lognormal(0.3, 0.3, n)), list(rng.normal(3.5, 1, n)))
    )
    arms = {"control": 1, "faster": 1, "same": 1, "slower": 1}
    report = stats.report(rows, arms, "control")["arms"]
    decided = {
        arm: {m: report[arm]["vs_control"][m]["decision"] for m in ("latency_s", "feedback")}
        for arm in ("faster", "same", "slower")
    }
    assert decided["faster"] == {"latency_s": "better", "feedback": "worse"}
    assert decided["slower"] == {"latency_s": "worse", "feedback": "better"}
    assert decided["same"] == {"latency_s": "no difference yet", "feedback": "no difference yet"}
    assert report["faster"]["vs_control"]["ttft_s"]["decision"] == "better"
    faster = report["faster"]["vs_control"]["latency_s"]
    assert faster["always_valid_p"] < sequential.ALPHA
    low, high = faster["confidence_sequence"]
    assert low <= faster["difference"] <= high < 0
    assert report["same"]["vs_control"]["latency_s"]["always_valid_p"] >= sequential.ALPHA


def test_mde_is_the_half_width_and_shrinks_with_data():
    rng = np.random.default_rng(2)
    mdes = []
    for n in (100, 400, 1600):
        found = sequential.compare(rng.normal(0, 1, n), rng.normal(0, 1, n))
        summary = sequential.summary(found, higher_is_better=True)
        low, high = summary["confidence_sequence"]
        assert summary["mde"] == pytest.approx((high - low) / 2)
        mdes.append(summary["mde"])
    assert mdes[0] > mdes[1] > mdes[2]
    # Near the n TAU_SD is tuned for, the always-valid sequence costs about 3.05 standard
    # errors where the fixed-horizon 95 % interval takes 1.96.
    standard_error = math.sqrt(2 / 1600)
    assert 2.8 * standard_error < mdes[2] < 3.3 * standard_error


def test_fixed_horizon_figures_are_labelled():
    rng = np.random.default_rng(3)
    rows = _rows("a", list(rng.lognormal(0, 0.3, 50))) + _rows("b", list(rng.lognormal(0, 0.3, 50)))
    latency = stats.report(rows, {"a": 1, "b": 1}, "a")["arms"]["b"]["vs_control"]["latency_s"]
    assert latency["fixed_horizon"]["welch_t_p"] == latency["p_value"]
    assert latency["fixed_horizon"]["mann_whitney_u_p"] == latency["rank"]["p_value"]
    assert "inflates the false-positive rate" in latency["fixed_horizon"]["note"]


def test_too_little_data_gives_none_not_a_guess():
    rows = _rows("a", [1.0, 1.2, 0.9]) + _rows("b", [1.1, 1.3, 1.0])
    latency = stats.report(rows, {"a": 1, "b": 1}, "a")["arms"]["b"]["vs_control"]["latency_s"]
    assert latency["always_valid_p"] is None and latency["confidence_sequence"] is None
    assert latency["mde"] is None and latency["decision"] == "no difference yet"


@pytest.mark.parametrize(
    "rows",
    [
        [],
        _rows("a", [1.0]),
        _rows("a", [1.0] * 30, [4.0] * 30) + _rows("b", [1.0] * 30, [4.0] * 30),
        _rows("a", [1.0] * 20, errors=[True] * 20) + _rows("b", [2.0] * 20, errors=[True] * 20),
        _rows("a", [0.5, 2.0] * 15, [1.0, None] * 15) + _rows("b", [1.0] * 3, [5.0] * 3),
        _rows("a", [0.5, 2.0] * 15) + _rows("b", [0.4, 2.5] * 15) + _rows("x", [1.0]),
    ],
    ids=["empty", "one-row", "constant", "all-errors", "sparse", "unknown-arm"],
)
def test_report_is_plain_json(rows):
    report = stats.report(rows, {"a": 1, "b": 1}, "a")
    text = json.dumps(report, allow_nan=False)  # raises on NaN or inf
    assert json.loads(text) == report
    assert set(report) >= {"control", "confidence", "arms", "sample_ratio_mismatch"}
    for name in ("latency_s", "ttft_s", "feedback"):
        figures = report["arms"]["b"]["vs_control"][name]
        assert figures["decision"] in ("better", "worse", "no difference yet")
        assert {"always_valid_p", "confidence_sequence", "mde", "p_value"} <= set(figures)


def _error_rows(arm: str, errors: np.ndarray) -> list[dict]:
    return _rows(arm, [1.0] * len(errors), errors=list(errors))


def test_error_guardrail_breaches_within_a_few_hundred_rows():
    rng = np.random.default_rng(4)
    control, arm = rng.random(300) < 0.01, rng.random(300) < 0.40
    rows = _error_rows("control", control) + _error_rows("canary", arm)
    breach = stats.guardrail_breach(rows, "control", "canary", "error_rate", 0.05)
    assert breach is not None and breach.metric == "error_rate"
    assert breach.low > 0.05 and breach.low <= breach.estimate <= breach.high
    assert breach.estimate == pytest.approx(arm.mean() - control.mean())
    assert "error rate 0.4" in breach.reason and "more than 0.05" in breach.reason
    assert "always-valid 95%" in breach.reason
    # Only the arm's own rows count: the same errors in the control are no breach.
    swapped = _error_rows("control", arm) + _error_rows("canary", control)
    assert stats.guardrail_breach(swapped, "control", "canary", "error_rate", 0.05) is None


def test_identical_arms_breach_no_guardrail():
    rng = np.random.default_rng(5)
    n = 2000
    rows = []
    for arm in ("control", "twin"):
        rows += _rows(
            arm,
            list(rng.lognormal(0, 0.5, n)),
            list(rng.normal(3, 1, n)),
            list(rng.random(n) < 0.02),
        )
    for metric, margin in [("error_rate", 0.0), ("latency", 0.0), ("ttft_p95", 0.1)]:
        assert stats.guardrail_breach(rows, "control", "twin", metric, margin) is None, metric
    assert stats.guardrail_breach(rows, "control", "twin", "feedback", 0.0) is None


def test_latency_feedback_and_ttft_guardrails_respect_their_margins():
    rng = np.random.default_rng(6)
    n = 1500
    base = rng.lognormal(0, 0.3, n)
    slow = rng.lognormal(0, 0.3, n) * 1.3
    rows = _rows("control", list(base), list(rng.normal(3, 1, n))) + _rows(
        "slow", list(slow), list(rng.normal(2.7, 1, n))
    )
    latency = stats.guardrail_breach(rows, "control", "slow", "latency", 0.1)
    assert latency is not None and latency.low > latency.threshold > 0
    assert latency.estimate == pytest.approx(slow.mean() - base.mean())
    assert "slower by more than 10%" in latency.reason
    # 30 % slower is not shown to be more than 50 % slower.
    assert stats.guardrail_breach(rows, "control", "slow", "latency", 0.5) is None
    assert stats.guardrail_breach(rows, "control", "slow", "ttft_p95", 0.1) is not None
    assert stats.guardrail_breach(rows, "control", "slow", "ttft_p95", 0.5) is None
    # Feedback 0.3 lower: beyond a 0.1 margin, not beyond 0.5.
    feedback = stats.guardrail_breach(rows, "control", "slow", "feedback", 0.1)
    assert feedback is not None and feedback.high < -0.1 and "feedback" in feedback.reason
    assert stats.guardrail_breach(rows, "control", "slow", "feedback", 0.5) is None
    # Better is never a breach.
    assert stats.guardrail_breach(rows, "slow", "control", "latency", 0.0) is None
    assert stats.guardrail_breach(rows, "slow", "control", "feedback", 0.0) is None


def test_ttft_guardrail_sees_a_slow_tail_the_median_hides():
    rng = np.random.default_rng(7)
    n = 1500
    base = rng.lognormal(-2, 0.3, n)
    tail = rng.lognormal(-2, 0.3, n)
    tail[rng.random(n) < 0.15] *= 4  # 15 % of requests four times slower, median unchanged
    rows = _rows("control", list(4 * base)) + _rows("tail", list(4 * tail))
    breach = stats.guardrail_breach(rows, "control", "tail", "ttft_p95", 0.2)
    assert breach is not None and breach.metric == "ttft_p95"
    assert "ttft p95" in breach.reason and "control" in breach.reason


def test_guardrail_rejects_bad_arguments():
    with pytest.raises(ValueError, match="metric"):
        stats.guardrail_breach([], "a", "b", "throughput", 0.1)
    for margin in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="margin"):
            stats.guardrail_breach([], "a", "b", "latency", margin)
    assert stats.guardrail_breach([], "a", "b", "error_rate", 0.05) is None


def test_the_report_publishes_the_always_valid_p_value_for_alerts():
    from prometheus_client import generate_latest

    from server.metrics.registry import Metrics

    rng = np.random.default_rng(3)
    rows = _rows("a", list(rng.normal(1.0, 0.1, 300))) + _rows("b", list(rng.normal(1.5, 0.1, 300)))
    report = {"experiment": "ab", **stats.report(rows, {"a": 1.0, "b": 1.0}, "a")}
    metrics = Metrics(enabled=True)
    metrics.publish_report(report)
    text = generate_latest(metrics.registry).decode()
    line = next(
        x
        for x in text.splitlines()
        if x.startswith("leanserve_experiment_always_valid_p{")
        and 'arm="b"' in x
        and 'metric="latency_s"' in x
    )
    assert float(line.split()[-1]) == pytest.approx(
        report["arms"]["b"]["vs_control"]["latency_s"]["always_valid_p"]
    )
    assert float(line.split()[-1]) < 0.05
