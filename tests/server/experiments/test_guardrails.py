"""Guardrails on synthetic outcome rows: an arm shown worse than the control by more than the
margin is stopped in the shared store (with the reason), its users go to the control on every
replica, the report, the metrics and the log say why; an arm no worse is left alone."""

from __future__ import annotations

import asyncio
import logging
import random

from server.settings import ExperimentSettings
from tests.server.experiments.helpers import BASE, W8A8, outcome, replica

W4 = f"{BASE}:w4a16"


def _settings(*guardrails: dict, arms=(BASE, W8A8)) -> ExperimentSettings:
    return ExperimentSettings(
        name="ab", arms=[{"variant": v} for v in arms], guardrails=list(guardrails)
    )


def _rows(arm: str, variant: str, n: int, error_rate: float, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [
        outcome(
            "ab",
            arm,
            variant,
            "502" if rng.random() < error_rate else None,
            rng.lognormvariate(-1.5, 0.3),
        )
        for _ in range(n)
    ]


async def test_an_arm_with_more_errors_is_stopped_everywhere(replicas, caplog):
    a, b = replicas
    await a.create(_settings({"metric": "error_rate", "margin": 0.05}))
    await b.refresh()
    a.store._insert(_rows(BASE, BASE, 200, 0.0) + _rows(W8A8, W8A8, 200, 0.4, seed=1))
    assert {b.assign(f"user-{i}")[1] for i in range(200)} == {BASE, W8A8}

    with caplog.at_level(logging.WARNING, logger="leanserve.experiments"):
        await a.check_guardrails()
    stop = a.get("ab").arm_stops[W8A8]
    assert stop["metric"] == "error_rate" and "error rate" in stop["reason"]
    assert stop["low"] > 0.05 and stop["margin"] == 0.05
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and "ab" in warning[0] and W8A8 in warning[0]
    assert stop["reason"] in warning[0]
    registry = a.metrics.registry
    labels = {"experiment": "ab", "arm": W8A8, "metric": "error_rate"}
    assert registry.get_sample_value("leanserve_experiment_arm_stopped", labels) == 1
    assert registry.get_sample_value("leanserve_experiment_guardrail_breaches_total", labels) == 1

    # The other replica: routes everyone to the control once it has refreshed, and finding the
    # same breach again writes nothing more.
    await b.refresh()
    assert {b.assign(f"user-{i}")[1] for i in range(200)} == {BASE}
    assert b.metrics.registry.get_sample_value("leanserve_experiment_arm_stopped", labels) == 1
    version = b.get("ab").version
    await b.check_guardrails()
    assert b.get("ab").version == version
    assert b.get("ab").state == "running"
    assert b.get("ab").state_reason == "every arm but the control was stopped by a guardrail"

    report = await b.report("ab")
    assert report["arms"][W8A8]["guardrail"]["stopped"] is True
    assert report["arms"][W8A8]["guardrail"]["reason"] == stop["reason"]
    assert report["arms"][BASE]["guardrail"] == {"stopped": False}
    assert report["guardrails"] == [
        {"metric": "error_rate", "margin": 0.05, "stopped_arms": [W8A8]}
    ]
    view = b.view(b.get("ab"))
    assert view["arms"][1]["guardrail"]["stopped"] is True


async def test_fallbacks_count_as_the_arms_failures(replicas):
    """The arm's variant failed before its first token and the control's variant answered: the
    user got an answer, but the arm did not serve it."""
    a, _ = replicas
    await a.create(_settings({"metric": "error_rate", "margin": 0.05}))
    fallbacks = [outcome("ab", W8A8, BASE) for _ in range(60)]
    a.store._insert(_rows(BASE, BASE, 200, 0.0) + fallbacks)
    await a.check_guardrails()
    assert W8A8 in a.get("ab").arm_stops


async def test_an_arm_no_worse_is_not_stopped(replicas):
    a, _ = replicas
    await a.create(
        _settings({"metric": "error_rate", "margin": 0.05}, {"metric": "latency", "margin": 0.1})
    )
    a.store._insert(_rows(BASE, BASE, 500, 0.02, seed=2) + _rows(W8A8, W8A8, 500, 0.02, seed=3))
    await a.check_guardrails()
    assert a.get("ab").arm_stops == {}
    assert a.get("ab").version == 1


async def test_only_the_breaching_arm_stops(replicas):
    a, _ = replicas
    await a.create(_settings({"metric": "error_rate", "margin": 0.05}, arms=(BASE, W8A8, W4)))
    a.store._insert(
        _rows(BASE, BASE, 200, 0.0) + _rows(W8A8, W8A8, 200, 0.0) + _rows(W4, W4, 200, 0.5)
    )
    await a.check_guardrails()
    assert set(a.get("ab").arm_stops) == {W4}
    arms = {a.assign(f"user-{i}")[1] for i in range(300)}
    assert arms == {BASE, W8A8}
    assert a.get("ab").state_reason is None


async def test_paused_experiments_are_not_checked(replicas):
    a, _ = replicas
    await a.create(_settings({"metric": "error_rate", "margin": 0.05}))
    await a.set_state("ab", "pause")
    a.store._insert(_rows(BASE, BASE, 200, 0.0) + _rows(W8A8, W8A8, 200, 0.5))
    await a.check_guardrails()
    assert a.get("ab").arm_stops == {}


async def test_the_background_check_stops_the_arm(tmp_path):
    checker = replica(tmp_path / "shared.db", check_s=0.1)
    await checker.start()
    try:
        await checker.create(_settings({"metric": "error_rate", "margin": 0.05}))
        checker.store._insert(_rows(BASE, BASE, 200, 0.0) + _rows(W8A8, W8A8, 200, 0.5))
        for _ in range(100):
            if checker.get("ab").arm_stops:
                break
            await asyncio.sleep(0.05)
        assert W8A8 in checker.get("ab").arm_stops
    finally:
        await checker.stop()
