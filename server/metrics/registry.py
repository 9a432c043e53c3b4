"""The gateway's own Prometheus series (prefix leanserve_, base units, _total only on counters).

Labels are bounded: `variant` takes only names of variants that exist (an unknown model name in
a request never creates a series), `route` the few API paths, `status` HTTP status codes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TOKEN_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "leanserve_requests",
            "Requests answered, by variant, route and HTTP status.",
            ["variant", "route", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "leanserve_request_duration_seconds",
            "Time from request received to last byte sent.",
            ["variant", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft_seconds = Histogram(
            "leanserve_time_to_first_token_seconds",
            "Time from request received to first token sent.",
            ["variant"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tpot_seconds = Histogram(
            "leanserve_time_per_output_token_seconds",
            "Mean time between output tokens of a request.",
            ["variant"],
            buckets=TOKEN_LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "leanserve_prompt_tokens", "Prompt tokens processed.", ["variant"], registry=r
        )
        self.generation_tokens = Counter(
            "leanserve_generation_tokens", "Tokens generated.", ["variant"], registry=r
        )
        self.in_flight = Gauge(
            "leanserve_requests_in_flight", "Requests being served now.", ["variant"], registry=r
        )
        self.engine_up = Gauge(
            "leanserve_engine_up",
            "1 when the variant's engine answers, else 0.",
            ["variant"],
            registry=r,
        )
        self.engine_restarts = Gauge(
            "leanserve_engine_restarts",
            "Times the variant's engine was restarted.",
            ["variant"],
            registry=r,
        )

    def add_variant(self, variant: str, routes: tuple[str, ...] = ("chat", "completions")) -> None:
        """Pre-create a variant's series so dashboards show zeros, not gaps."""
        for route in routes:
            self.request_seconds.labels(variant, route)
        self.ttft_seconds.labels(variant)
        self.tpot_seconds.labels(variant)
        self.prompt_tokens.labels(variant)
        self.generation_tokens.labels(variant)
        self.in_flight.labels(variant)
        self.engine_up.labels(variant)

    def record_usage(self, variant: str, usage: dict | None) -> int:
        """Count a finished request's tokens; returns the completion tokens."""
        if not usage:
            return 0
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        self.prompt_tokens.labels(variant).inc(prompt)
        self.generation_tokens.labels(variant).inc(completion)
        return completion
