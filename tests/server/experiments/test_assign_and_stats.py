"""Sticky assignment and the report's statistics, checked against scipy directly."""

from __future__ import annotations

import random

import numpy as np
from scipy import stats as sps

from server.experiments import stats
from server.experiments.assign import assign, bucket, choose_arm

ARMS = [("a", 70.0), ("b", 30.0)]


def test_same_user_same_arm():
    assert all(
        assign("exp", ARMS, f"user-{i}") == assign("exp", ARMS, f"user-{i}") for i in range(200)
    )


def test_split_follows_weights():
    arms = [assign("exp", ARMS, f"user-{i}") for i in range(10_000)]
    assert abs(arms.count("a") / len(arms) - 0.7) < 0.02


def test_experiments_assign_independently():
    same = sum(bucket("x", f"u{i}") < 0.5 and bucket("y", f"u{i}") < 0.5 for i in range(4000))
    assert abs(same / 4000 - 0.25) < 0.03


def test_choose_arm_edges():
    assert choose_arm(ARMS, 0.0) == "a"
    assert choose_arm(ARMS, 0.6999) == "a"
    assert choose_arm(ARMS, 0.7) == "b"


def _rows(arm: str, latencies, feedback) -> list[dict]:
    return [
        {
            "arm": arm,
            "latency_s": x,
            "ttft_s": x / 4,
            "error": None,
            "feedback": f,
            "completion_tokens": 8,
        }
        for x, f in zip(latencies, feedback, strict=True)
    ]


def test_report_matches_scipy():
    rng = random.Random(7)
    lat_a = [rng.lognormvariate(0, 0.3) for _ in range(300)]
    lat_b = [rng.lognormvariate(0.1, 0.3) for _ in range(280)]
    fb_a = [rng.gauss(3.0, 1.0) for _ in range(300)]
    fb_b = [rng.gauss(3.4, 1.0) for _ in range(280)]
    report = stats.report(_rows("a", lat_a, fb_a) + _rows("b", lat_b, fb_b), {"a": 1, "b": 1}, "a")
    b = report["arms"]["b"]
    welch = sps.ttest_ind(fb_b, fb_a, equal_var=False)
    assert np.isclose(b["vs_control"]["feedback"]["p_value"], welch.pvalue)
    assert np.isclose(b["vs_control"]["feedback"]["difference"], np.mean(fb_b) - np.mean(fb_a))
    lat_p = sps.ttest_ind(lat_b, lat_a, equal_var=False).pvalue
    assert np.isclose(b["vs_control"]["latency_s"]["p_value"], lat_p)
    mw = sps.mannwhitneyu(lat_b, lat_a, alternative="two-sided").pvalue
    assert np.isclose(b["vs_control"]["latency_s"]["rank"]["p_value"], mw)
    low, high = sps.t.interval(0.95, len(lat_b) - 1, loc=np.mean(lat_b), scale=sps.sem(lat_b))
    mean = b["latency_s"]["mean"]
    assert np.isclose(mean["low"], low) and np.isclose(mean["high"], high)
    p95 = b["latency_s"]["p95"]
    assert p95["low"] <= p95["estimate"] <= p95["high"]
    assert np.isclose(p95["estimate"], np.quantile(lat_b, 0.95))
    srm = sps.chisquare([300, 280], [290, 290]).pvalue
    assert np.isclose(report["sample_ratio_mismatch"]["p_value"], srm)
    assert not report["sample_ratio_mismatch"]["mismatch"]


def test_sample_ratio_mismatch_is_flagged():
    rows = _rows("a", [1.0] * 700, [1.0] * 700) + _rows("b", [1.0] * 300, [1.0] * 300)
    report = stats.report(rows, {"a": 1, "b": 1}, "a")
    assert report["sample_ratio_mismatch"]["mismatch"]
