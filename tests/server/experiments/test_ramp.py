"""A ramp grows the non-control arms' traffic step by step over running time: at share s each
gets s times its full-rollout traffic, users admitted to an arm stay in it as s grows, and a
paused experiment's ramp waits."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from server.experiments.assign import assign
from server.settings import ExperimentSettings
from tests.server.experiments.helpers import BASE, W8A8, Clock, replica

USERS = [f"user-{i}" for i in range(20_000)]
RAMPED = ExperimentSettings(
    name="ramped",
    arms=[{"variant": BASE}, {"variant": W8A8}],
    ramp={"steps": [0.1, 0.5, 1.0], "step_s": 60},
)


def _treated(experiments) -> set[str]:
    return {u for u in USERS if experiments.assign(u)[1] == W8A8}


async def test_ramp_weights_over_time(tmp_path):
    clock = Clock()
    experiments = replica(tmp_path / "x.db", clock=clock)
    await experiments.start()
    try:
        await experiments.create(RAMPED)
        shares = {}
        treated = {}
        for t in (0, 59, 60, 120, 10_000):
            clock.now = 1_000_000.0 + t
            treated[t] = _treated(experiments)
            shares[t] = len(treated[t]) / len(USERS)
        # Equal weights: the treatment's full share is 0.5.
        assert shares[0] == pytest.approx(0.05, abs=0.01)
        assert shares[59] == shares[0]
        assert shares[60] == pytest.approx(0.25, abs=0.015)
        assert shares[120] == pytest.approx(0.5, abs=0.015)
        assert shares[10_000] == shares[120]
        assert treated[0] <= treated[60] <= treated[120]  # sticky as the ramp grows
        # At full rollout the split is exactly the plain sticky assignment's.
        arms = [(BASE, 1.0), (W8A8, 1.0)]
        assert treated[120] == {u for u in USERS if assign("ramped", arms, u) == W8A8}
        view = experiments.view(experiments.get("ramped"))
        assert view["ramp"] == {"steps": [0.1, 0.5, 1.0], "step_s": 60.0, "share": 1.0}
    finally:
        await experiments.stop()


async def test_a_paused_ramp_waits(tmp_path):
    clock = Clock()
    experiments = replica(tmp_path / "x.db", clock=clock)
    await experiments.start()
    try:
        await experiments.create(RAMPED)
        clock.now += 70  # running 70 s: step 1
        await experiments.set_state("ramped", "pause")
        clock.now += 10_000
        await experiments.set_state("ramped", "resume")
        assert experiments.get("ramped").share(clock.now) == 0.5
        clock.now += 49  # running 119 s
        assert experiments.get("ramped").share(clock.now) == 0.5
        clock.now += 1
        assert experiments.get("ramped").share(clock.now) == 1.0
    finally:
        await experiments.stop()


@pytest.mark.parametrize(
    "ramp",
    [
        {"steps": [0.5, 0.2], "step_s": 60},
        {"steps": [0, 1.0], "step_s": 60},
        {"steps": [0.5, 1.5], "step_s": 60},
        {"steps": [], "step_s": 60},
        {"steps": [0.5], "step_s": 0},
    ],
)
def test_bad_ramps_are_refused(ramp):
    with pytest.raises(ValidationError):
        ExperimentSettings(name="x", arms=[{"variant": BASE}, {"variant": W8A8}], ramp=ramp)


def test_bad_guardrails_are_refused():
    for guardrail in ({"metric": "p99", "margin": 0.1}, {"metric": "latency", "margin": -1}):
        with pytest.raises(ValidationError):
            ExperimentSettings(
                name="x", arms=[{"variant": BASE}, {"variant": W8A8}], guardrails=[guardrail]
            )
