"""Routing policies: pure functions from the variants' state to a ranked list of candidates.

A policy sees plain data (BackendState) and does no I/O, so each one is a few lines that a unit
test can feed directly. The first name in `Decision.ranked` serves the request; the rest are the
fallbacks, in order, should it fail before its first token.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


class PolicyName(StrEnum):
    QUALITY = "quality"
    COST = "cost"
    LATENCY = "latency"
    SLO = "slo"
    PINNED = "pinned"


@dataclass(frozen=True)
class BackendState:
    name: str
    quality: float  # 0..1 from the card; the base is 1.0
    cost_per_mtok: float  # USD per million generated tokens at its measured throughput
    ttft_s: float  # predicted time to first token (live moving average, adjusted for queue)
    tpot_s: float  # predicted time per output token
    relative_cost: float = 1.0  # cost per token against the base's
    # As many requests in flight as its learned concurrency limit, or an engine on the same CPU
    # cores serving requests (routing/service.py cpu_mates_busy).
    at_limit: bool = False
    quality_source: str = "card"  # where `quality` came from, for the route reason


@dataclass(frozen=True)
class RoutingGoals:
    quality_floor: float
    slo_ttft_s: float
    slo_tpot_s: float


@dataclass(frozen=True)
class Decision:
    ranked: list[str]
    reason: str  # for people: the X-Leanserve-Route-Reason header
    code: str = ""  # for metrics: a bounded label value


Policy = Callable[[list[BackendState], RoutingGoals], Decision]


def _names(states: list[BackendState]) -> list[str]:
    return [s.name for s in states]


def quality(states: list[BackendState], goals: RoutingGoals) -> Decision:
    ranked = sorted(states, key=lambda s: (-s.quality, s.cost_per_mtok))
    return Decision(
        _names(ranked), f"quality: best quality {ranked[0].quality:.3f}", "best_quality"
    )


def cost(states: list[BackendState], goals: RoutingGoals) -> Decision:
    good = sorted(
        (s for s in states if s.quality >= goals.quality_floor), key=lambda s: s.cost_per_mtok
    )
    rest = sorted((s for s in states if s.quality < goals.quality_floor), key=lambda s: -s.quality)
    if not good:
        return Decision(
            _names(rest),
            f"cost: none at quality floor {goals.quality_floor}; best quality",
            "below_floor",
        )
    first = good[0]
    return Decision(
        _names(good + rest),
        f"cost: cheapest at quality >= {goals.quality_floor} "
        f"(cost {first.relative_cost:.2f}x the base's, quality {first.quality:.3f})",
        "cheapest_at_floor",
    )


def predicted_latency_s(state: BackendState, output_tokens: int = 64) -> float:
    return state.ttft_s + state.tpot_s * output_tokens


def latency(states: list[BackendState], goals: RoutingGoals) -> Decision:
    ranked = sorted(states, key=predicted_latency_s)
    first = ranked[0]
    return Decision(
        _names(ranked),
        f"latency: lowest predicted latency (ttft {first.ttft_s * 1000:.0f} ms, "
        f"tpot {first.tpot_s * 1000:.1f} ms)",
        "lowest_latency",
    )


def slo(states: list[BackendState], goals: RoutingGoals) -> Decision:
    def meets(s: BackendState) -> bool:
        return not s.at_limit and s.ttft_s <= goals.slo_ttft_s and s.tpot_s <= goals.slo_tpot_s

    good = sorted(
        (s for s in states if meets(s) and s.quality >= goals.quality_floor),
        key=lambda s: s.cost_per_mtok,
    )
    fastest = sorted((s for s in states if s not in good), key=predicted_latency_s)
    if good:
        return Decision(
            _names(good + fastest),
            f"slo: cheapest meeting ttft <= {goals.slo_ttft_s} s, tpot <= {goals.slo_tpot_s} s "
            f"at quality >= {goals.quality_floor}",
            "meets_slo",
        )
    return Decision(_names(fastest), "slo: none meets the SLO; fastest predicted", "slo_fastest")


POLICIES: dict[PolicyName, Policy] = {
    PolicyName.QUALITY: quality,
    PolicyName.COST: cost,
    PolicyName.LATENCY: latency,
    PolicyName.SLO: slo,
}
