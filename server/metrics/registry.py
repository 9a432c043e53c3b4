"""The gateway's own Prometheus series (prefix leanserve_, base units, _total only on counters).

Labels are bounded: `variant` takes only names of variants that exist (an unknown model name in
a request never creates a series), `route` the few API paths, `status` HTTP status codes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from compress.schema import Card

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TOKEN_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)
# leanserve_engine_placement_info's labels besides `variant` (server/placement/plan.py).
PLACEMENT_LABELS = (
    "device", "cores", "numa_node", "gpus", "tp", "memory_fraction", "shares_with", "nice",
)  # fmt: skip


class _Null:
    """Stands in for a metric when metrics are off: accepts every call, records nothing."""

    def labels(self, *args, **kwargs):
        return self

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


_NULL = _Null()


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    enabled: bool = True

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

        self.routing_decisions = Counter(
            "leanserve_routing_decisions",
            "Requests routed, by policy, chosen variant and reason.",
            ["policy", "variant", "reason"],
            registry=r,
        )
        self.fallbacks = Counter(
            "leanserve_fallbacks",
            "Variants skipped after failing before the first token.",
            ["variant", "reason"],
            registry=r,
        )
        self.build_progress = Gauge(
            "leanserve_build_progress_ratio",
            "Progress of the variant's compress job, 0 to 1.",
            ["variant"],
            registry=r,
        )
        self.build_failed = Gauge(
            "leanserve_build_failed",
            "1 when the variant's last compress job failed, else 0.",
            ["variant"],
            registry=r,
        )
        self.build_failures = Counter(
            "leanserve_build_failures", "Compress jobs that failed.", ["variant"], registry=r
        )
        self.variant_info = Gauge(
            "leanserve_variant_info",
            "Served variants (value 1) and their recipe.",
            ["variant", "recipe", "method"],
            registry=r,
        )
        self.variant_quality = Gauge(
            "leanserve_variant_quality",
            "Measured quality from the variant's card.",
            ["variant", "metric"],
            registry=r,
        )
        self.variant_size = Gauge(
            "leanserve_variant_size_bytes", "Checkpoint size on disk.", ["variant"], registry=r
        )
        self.live_quality = Gauge(
            "leanserve_live_quality",
            "A variant against the base on live traffic (a sample of answers read back by both, "
            "after they were sent): top1_agreement, kl (nats per token), ci95_low, ci95_high.",
            ["variant", "metric"],
            registry=r,
        )
        self.live_quality_samples = Counter(
            "leanserve_live_quality_samples",
            "Requests scored for live quality, by the variant compared with the base.",
            ["variant"],
            registry=r,
        )
        self.live_quality_dropped = Counter(
            "leanserve_live_quality_dropped",
            "Sampled answers (or comparisons) not scored: queue_full, busy (no spare capacity "
            "in time), failed, mismatch (no clean prompt/answer boundary), no_answer.",
            ["reason"],
            registry=r,
        )
        self.experiment_assignments = Counter(
            "leanserve_experiment_assignments",
            "Requests assigned to an experiment arm.",
            ["experiment", "arm"],
            registry=r,
        )
        self.experiment_outcomes = Counter(
            "leanserve_experiment_outcomes",
            "Finished experiment requests by arm and status.",
            ["experiment", "arm", "status"],
            registry=r,
        )
        self.experiment_outcomes_rejected = Counter(
            "leanserve_experiment_outcomes_rejected",
            "Experiment outcome records the database refused (dropped, logged).",
            registry=r,
        )
        self.experiment_latency = Gauge(
            "leanserve_experiment_latency_seconds",
            "Per-arm latency from the last report.",
            ["experiment", "arm", "stat"],
            registry=r,
        )
        self.experiment_feedback = Gauge(
            "leanserve_experiment_feedback_mean",
            "Per-arm mean feedback from the last report.",
            ["experiment", "arm"],
            registry=r,
        )
        self.experiment_p_value = Gauge(
            "leanserve_experiment_p_value",
            "Fixed-horizon (Welch) p-value of an arm against the control, last report: valid "
            "only when read once at a sample size fixed in advance.",
            ["experiment", "arm", "metric"],
            registry=r,
        )
        self.experiment_always_valid_p = Gauge(
            "leanserve_experiment_always_valid_p",
            "Always-valid p-value of an arm against the control, last report: valid however "
            "often it is read (alert on it, not on leanserve_experiment_p_value).",
            ["experiment", "arm", "metric"],
            registry=r,
        )
        self.experiment_arm_stopped = Gauge(
            "leanserve_experiment_arm_stopped",
            "1 when a guardrail stopped the arm (its users go to the control), by the metric.",
            ["experiment", "arm", "metric"],
            registry=r,
        )
        self.experiment_guardrail_breaches = Counter(
            "leanserve_experiment_guardrail_breaches",
            "Guardrail breaches this gateway found and acted on (stopping the arm).",
            ["experiment", "arm", "metric"],
            registry=r,
        )

        self.engine_queue = Gauge(
            "leanserve_engine_queue_requests",
            "Requests waiting in the engine (vLLM).",
            ["variant"],
            registry=r,
        )
        self.engine_running = Gauge(
            "leanserve_engine_running_requests",
            "Requests running in the engine (vLLM).",
            ["variant"],
            registry=r,
        )
        self.engine_kv_cache = Gauge(
            "leanserve_engine_kv_cache_usage_ratio",
            "KV-cache in use, 0-1 (vLLM).",
            ["variant"],
            registry=r,
        )
        self.engine_placement = Gauge(
            "leanserve_engine_placement_info",
            "Where each local engine runs (value 1), from the placement plan: its cores and "
            "NUMA node (CPU) or GPUs, tensor parallelism and GPU memory share (GPU), the engines "
            "it shares them with, and its compute processes' nice value.",
            ["variant", *PLACEMENT_LABELS],
            registry=r,
        )
        self._placement_labels: dict[str, tuple[str, ...]] = {}
        self.tokens_by_variant: dict[str, float] = {}  # for energy attribution at scrape time
        if not self.enabled:
            # Metrics off (to measure what they cost): every series becomes a no-op and the
            # registry stays empty.
            for name, value in list(vars(self).items()):
                if isinstance(value, Counter | Gauge | Histogram):
                    setattr(self, name, _NULL)
                    r.unregister(value)

    def set_placement(self, variant: str, placement) -> None:
        """`placement`: the engine's server.placement.Placement; one series per variant."""
        self.clear_placement(variant)
        values = placement.labels()
        labels = (variant, *(values[k] for k in PLACEMENT_LABELS))
        self.engine_placement.labels(*labels).set(1)
        self._placement_labels[variant] = labels

    def clear_placement(self, variant: str) -> None:
        labels = self._placement_labels.pop(variant, None)
        if labels is not None:
            self.engine_placement.remove(*labels)

    def add_build(self, variant: str) -> None:
        self.build_progress.labels(variant).set(0)
        self.build_failed.labels(variant).set(0)
        self.build_failures.labels(variant)

    def set_card(self, variant: str, recipe: str, card: Card | dict | None) -> None:
        """`card` as read from compress, or as JSON (a stand-in such as the base's)."""
        method = recipe.split("-")[0].split("+")[0]
        self.variant_info.labels(variant, recipe, method).set(1)
        if not isinstance(card, Card):
            card = Card.model_validate(card or {})
        for metric in ("top1_agreement", "perplexity", "kl_to_base", "last_word_accuracy"):
            value = getattr(card.quality, metric)
            if value is not None:
                self.variant_quality.labels(variant, metric).set(value)
        if card.size.bytes is not None:
            self.variant_size.labels(variant).set(card.size.bytes)

    def add_experiment(self, experiment: str, arms: list[str]) -> None:
        for arm in arms:
            self.experiment_assignments.labels(experiment, arm)
            for status in ("ok", "error"):
                self.experiment_outcomes.labels(experiment, arm, status)

    def publish_report(self, report: dict) -> None:
        name = report["experiment"]
        for arm, figures in report["arms"].items():
            for stat in ("mean", "p50", "p95"):
                value = figures["latency_s"][stat]["estimate"]
                if value is not None:
                    self.experiment_latency.labels(name, arm, stat).set(value)
            feedback = figures["feedback"]["mean"]["estimate"]
            if feedback is not None:
                self.experiment_feedback.labels(name, arm).set(feedback)
            for metric, test in (figures.get("vs_control") or {}).items():
                if test.get("p_value") is not None:
                    self.experiment_p_value.labels(name, arm, metric).set(test["p_value"])
                if test.get("always_valid_p") is not None:
                    self.experiment_always_valid_p.labels(name, arm, metric).set(
                        test["always_valid_p"]
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
        self.engine_queue.labels(variant)
        self.engine_running.labels(variant)
        self.engine_kv_cache.labels(variant)
        for status in ("200", "400", "499", "502", "503"):
            for route in routes:
                self.requests.labels(variant, route, status)

    def record_usage(self, variant: str, usage: dict | None) -> int:
        """Count a finished request's tokens; returns the completion tokens."""
        if not usage:
            return 0
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        self.prompt_tokens.labels(variant).inc(prompt)
        self.generation_tokens.labels(variant).inc(completion)
        self.tokens_by_variant[variant] = self.tokens_by_variant.get(variant, 0.0) + completion
        return completion
