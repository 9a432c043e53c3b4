"""Turn a request's model name (and policy, and user) into an ordered list of backends.

`<base>` is routed: by a running experiment's sticky arm, else by the policy named in the
request (header X-Leanserve-Policy or body field leanserve_policy), else the default policy.
`<base>:<variant>` is pinned. Quality comes from the variants' cards, or from live scoring once
it has enough samples (server/quality/); cost from the cards, latency from live measurements.
Everything is read from memory: a route plan does no I/O.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from compress.schema import Card
from server.backends.registry import Backend, Registry
from server.errors import APIError, bad_request
from server.routing.policies import POLICIES, BackendState, PolicyName, RoutingGoals
from server.settings import Settings

# Before a variant has served anything, predict from its card; before any card, from these.
DEFAULT_TTFT_S = 0.2
DEFAULT_TPOT_S = 0.05
NO_CARD = Card()  # a backend without a card reads as one with every figure unknown


@dataclass
class RoutePlan:
    """Where one request may go: candidates in order, and why (the X-Leanserve-* headers)."""

    candidates: list[Backend]
    policy: str
    reason: str
    code: str
    experiment: str | None = None
    arm: str | None = None
    skipped: list[str] = field(default_factory=list)


def quality_of(backend: Backend) -> float:
    """The card's headline quality: top-1 agreement with the base on chat answers when the card
    has it, else on held-out text; the base itself is 1.0, a variant without either 0.0."""
    if backend.variant is None:
        return 1.0
    quality = (backend.card or NO_CARD).quality
    value = quality.chat.top1_agreement
    if value is None:
        value = quality.top1_agreement
    return float(value) if value is not None else 0.0


def routed_quality(backend: Backend, settings: Settings) -> tuple[float, str]:
    """The quality routing uses, and where it came from: once a variant has
    quality.live_min_samples scored live requests, the lower end of its live 95 % interval of
    top-1 agreement (pessimistic, so a variant is not preferred on a lucky streak), else its
    card's figure."""
    if backend.variant is None:
        return 1.0, "base"
    live, wanted = backend.live_quality, settings.quality
    if wanted.use_live and live.n >= wanted.live_min_samples:
        interval = live.ci95()
        if interval is not None:
            return interval[0], f"live lower 95 % bound, n={live.n}"
    return quality_of(backend), "card"


def quality_note(states: list[BackendState]) -> str:
    """What the route reason adds: each variant's quality as routing saw it, and its source."""
    shown = [
        f"{s.name.rsplit(':', 1)[-1]} {s.quality:.3f} ({s.quality_source})"
        for s in states
        if s.quality_source != "base"
    ]
    return f"; quality: {', '.join(shown)}" if shown else ""


def speedup_of(backend: Backend) -> float:
    """Throughput relative to the base at 32 streams, measured in the same run."""
    if backend.variant is None:
        return 1.0
    card = backend.card or NO_CARD
    if card.speed.speedup_32:
        return float(card.speed.speedup_32)
    size_ratio = card.size.size_ratio
    # Unmeasured: decoding is memory-bound, so bytes read per token are the best proxy.
    return 1.0 / float(size_ratio) if size_ratio else 1.0


def base_tokens_per_s(registry: Registry) -> float | None:
    for backend in registry.backends.values():
        tps = (backend.card or NO_CARD).speed.base.streams_32.tokens_per_s
        if tps:
            return float(tps)
    return None


def prior_latency(backend: Backend) -> tuple[float, float]:
    one = (backend.card or NO_CARD).speed.variant.streams_1
    ttft = one.ttft_s_mean or DEFAULT_TTFT_S
    tps = one.tokens_per_s
    return float(ttft), (1.0 / float(tps) if tps else DEFAULT_TPOT_S)


def backend_state(
    backend: Backend, settings: Settings, base_tps: float | None, mates_busy: bool = False
) -> BackendState:
    """A snapshot of the backend for the policies; changes nothing (the admission limit is
    updated by the requests' leases, server/backends/lease.py). `mates_busy`: another engine
    on the same CPU cores serves requests, so this one has no capacity of its own now."""
    usd_per_mtok_base = settings.cost.machine_usd_per_hour / ((base_tps or 1.0) * 3600) * 1e6
    prior_ttft, prior_tpot = prior_latency(backend)
    ttft, tpot = backend.stats.predict(prior_ttft, prior_tpot)
    quality, source = routed_quality(backend, settings)
    return BackendState(
        name=backend.name,
        quality=quality,
        cost_per_mtok=usd_per_mtok_base / speedup_of(backend),
        ttft_s=ttft,
        tpot_s=tpot,
        relative_cost=1.0 / speedup_of(backend),
        at_limit=mates_busy or not backend.admission.allows(backend.in_flight),
        quality_source=source,
    )


def cpu_mates_busy(backend: Backend, registry: Registry) -> bool:
    """Engines that share CPU cores (fewer cores than engines: on 2 cores every variant shares
    the base's core, at a lower priority) serve one at a time under the slo policy: splitting a
    core between two busy engines adds no capacity, and the lower-priority one starves. At 3x
    the base's capacity on 2 cores, slo answered 158 requests within the SLO without this rule
    and 566 with it, against 369-498 for the base alone with shedding (BENCHMARKS.md "Overload
    on the planner's placement"). Engines sharing a GPU are not held back: the GPU interleaves
    their kernels."""
    return any(m.in_flight > 0 for m in registry.core_mates(backend, "cpu"))


def usable(backend: Backend, settings: Settings) -> str | None:
    """Why a backend cannot take a request now, or None when it can."""
    if not backend.accepting:
        return "retiring"
    if not backend.ready:
        return str(backend.engine.state)
    if not backend.breaker.allows():
        return "breaker open"
    if backend.in_flight >= settings.routing.max_in_flight:
        return "overloaded"
    return None


def retry_after_s(backend: Backend) -> int:
    """When a backend that cannot take a request now should be asked again, roughly."""
    breaker = backend.breaker
    if backend.ready and not breaker.allows() and breaker.opened_at is not None:
        left = breaker.cooldown_s - (time.monotonic() - breaker.opened_at)
        return max(1, math.ceil(left))
    return backend.engine.retry_after_s()


def _no_engine(model: str, why: list[str], retry_after: int) -> APIError:
    return APIError(
        503,
        f"No engine for '{model}' can take a request now: {', '.join(why)}; retry shortly.",
        "service_unavailable",
        None,
        "engine_unavailable",
        {"Retry-After": str(retry_after)},
    )


def parse_policy(raw: str | None) -> PolicyName | None:
    if raw is None:
        return None
    try:
        return PolicyName(raw.strip().lower())
    except ValueError:
        names = ", ".join(p.value for p in PolicyName)
        raise bad_request(
            f"Unknown routing policy {raw!r}; use one of {names}.", "leanserve_policy"
        ) from None


def route(
    model: str,
    policy: PolicyName | None,
    settings: Settings,
    registry: Registry,
    arm: tuple[str, str, str] | None = None,
) -> RoutePlan:
    """`arm` is (experiment, arm, variant) when the request takes part in an experiment."""
    if model != registry.base_name or policy == PolicyName.PINNED:
        # A pinned name has one candidate, admitted as routed ones are: not past its overload
        # limit, its breaker closed, not being retired.
        backend = registry.get(model)
        why = usable(backend, settings)
        if why is not None:
            raise _no_engine(model, [f"{backend.name} ({why})"], retry_after_s(backend))
        return RoutePlan([backend], "pinned", f"pinned: {backend.name}", "pinned")
    skipped = []
    states = []
    base_tps = base_tokens_per_s(registry)
    for backend in registry.backends.values():
        why = usable(backend, settings)
        if why is None:
            states.append(
                backend_state(backend, settings, base_tps, cpu_mates_busy(backend, registry))
            )
        else:
            skipped.append(f"{backend.name} ({why})")
    if not states:
        retry = min((retry_after_s(b) for b in registry.backends.values()), default=5)
        raise _no_engine(model, skipped, retry)
    goals = RoutingGoals(
        settings.routing.quality_floor, settings.routing.slo.ttft_s, settings.routing.slo.tpot_s
    )
    name = policy or PolicyName(settings.routing.default_policy)
    decision = POLICIES[name](states, goals)
    if decision.code == "slo_fastest" and settings.routing.shed_load and arm is None:
        raise APIError(
            429,
            "Every variant is at its concurrency limit or predicted to miss the latency SLO "
            "now; retry shortly.",
            "rate_limit_error",
            None,
            "overloaded",
            {"Retry-After": "1"},
        )
    ranked = [registry.backends[n] for n in decision.ranked]
    if arm is not None:
        experiment, arm_name, variant = arm
        chosen = registry.backends.get(variant)
        if chosen is not None and chosen in ranked:
            rest = [b for b in ranked if b is not chosen]
            return RoutePlan(
                [chosen, *rest],
                "experiment",
                f"experiment {experiment}: arm {arm_name} ({variant})",
                "experiment",
                experiment,
                arm_name,
                skipped,
            )
    reason = decision.reason
    if name != PolicyName.LATENCY:  # the latency policy does not look at quality
        reason += quality_note(states)
    return RoutePlan(ranked, name.value, reason, decision.code, skipped=skipped)
