"""Each policy on plain BackendState data: no engines, no I/O."""

from __future__ import annotations

from server.routing.policies import BackendState, RoutingGoals, cost, latency, quality, slo

BASE = BackendState("base", quality=1.0, cost_per_mtok=4.0, ttft_s=0.2, tpot_s=0.02)
W8A8 = BackendState("base:w8a8", quality=0.95, cost_per_mtok=3.3, ttft_s=0.18, tpot_s=0.017)
PRUNED = BackendState("base:prune", quality=0.70, cost_per_mtok=2.5, ttft_s=0.1, tpot_s=0.012)
GOALS = RoutingGoals(quality_floor=0.9, slo_ttft_s=0.5, slo_tpot_s=0.05)


def test_quality_picks_the_base():
    decision = quality([PRUNED, W8A8, BASE], GOALS)
    assert decision.ranked == ["base", "base:w8a8", "base:prune"]
    assert decision.reason.startswith("quality")


def test_cost_picks_cheapest_above_the_floor():
    decision = cost([BASE, W8A8, PRUNED], GOALS)
    assert decision.ranked[0] == "base:w8a8"  # prune is cheaper but below the floor
    assert decision.ranked[-1] == "base:prune"
    assert "cheapest" in decision.reason


def test_cost_with_a_low_floor_takes_the_cheapest():
    decision = cost([BASE, W8A8, PRUNED], RoutingGoals(0.5, 0.5, 0.05))
    assert decision.ranked[0] == "base:prune"


def test_cost_when_nothing_reaches_the_floor():
    decision = cost([W8A8, PRUNED], RoutingGoals(0.99, 0.5, 0.05))
    assert decision.ranked[0] == "base:w8a8" and decision.code == "below_floor"


def test_latency_picks_lowest_predicted():
    slow_base = BackendState("base", 1.0, 4.0, ttft_s=2.0, tpot_s=0.05)
    assert latency([slow_base, W8A8, PRUNED], GOALS).ranked[0] == "base:prune"


def test_slo_prefers_cheapest_meeting_it():
    assert slo([BASE, W8A8, PRUNED], GOALS).ranked[0] == "base:w8a8"


def test_slo_skips_an_overloaded_base():
    loaded = BackendState("base", 1.0, 2.0, ttft_s=3.0, tpot_s=0.02)
    decision = slo([loaded, W8A8], GOALS)
    assert decision.ranked == ["base:w8a8", "base"] and decision.code == "meets_slo"


def test_slo_when_none_meets_it_takes_the_fastest():
    a = BackendState("a", 1.0, 1.0, ttft_s=3.0, tpot_s=0.02)
    b = BackendState("b", 0.95, 2.0, ttft_s=2.0, tpot_s=0.02)
    decision = slo([a, b], GOALS)
    assert decision.ranked == ["b", "a"] and decision.code == "slo_fastest"


def test_slo_skips_a_variant_at_its_concurrency_limit():
    full = BackendState("base:w8a8", 0.95, 3.3, ttft_s=0.18, tpot_s=0.017, at_limit=True)
    decision = slo([BASE, full], GOALS)
    assert decision.ranked[0] == "base" and decision.code == "meets_slo"


def test_slo_with_every_variant_at_its_limit_meets_nothing():
    full = [
        BackendState(s.name, s.quality, s.cost_per_mtok, s.ttft_s, s.tpot_s, at_limit=True)
        for s in (BASE, W8A8)
    ]
    assert slo(full, GOALS).code == "slo_fastest"  # the gateway sheds on this (shed_load)
