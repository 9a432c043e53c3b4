"""Request rates and the routing split over the last minutes, for the status page.

Read from the gateway's own Prometheus counters (leanserve_requests_total and
leanserve_routing_decisions_total) every few seconds into a ring of samples, so the page shows
the recent past without a Prometheus server. With metrics off the counters record nothing, and
the summary says so instead of showing zeros.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

from server.metrics.registry import Metrics

INTERVAL_S = 5.0
WINDOW_S = 600.0
RATE_WINDOW_S = 60.0


@dataclass
class Sample:
    t: float
    requests: dict[str, float]  # variant -> requests answered (every route and status)
    routed: dict[tuple[str, str], float]  # (policy, variant) -> routing decisions


def _totals(counter, keys: tuple[str, ...]) -> dict:
    """Sum a labelled counter's `_total` samples by the given labels."""
    out: dict = {}
    for family in counter.collect() or []:
        for s in family.samples:
            if not s.name.endswith("_total"):
                continue
            key = s.labels[keys[0]] if len(keys) == 1 else tuple(s.labels[k] for k in keys)
            out[key] = out.get(key, 0.0) + s.value
    return out


@dataclass
class RequestRates:
    metrics: Metrics
    interval_s: float = INTERVAL_S
    window_s: float = WINDOW_S
    samples: deque[Sample] = field(init=False)

    def __post_init__(self) -> None:
        self.samples = deque(maxlen=int(self.window_s / self.interval_s) + 1)

    def read(self, now: float | None = None) -> Sample:
        return Sample(
            time.monotonic() if now is None else now,
            _totals(self.metrics.requests, ("variant",)),
            _totals(self.metrics.routing_decisions, ("policy", "variant")),
        )

    def sample(self, now: float | None = None) -> None:
        if self.metrics.enabled:
            self.samples.append(self.read(now))

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval_s)

    def summary(self, now: float | None = None) -> dict:
        if not self.metrics.enabled:
            return {"available": False, "reason": "metrics are off (metrics_enabled: false)"}
        latest = self.read(now)
        points = [*self.samples, latest]
        first = points[0]
        minute_ago = next((p for p in points if latest.t - p.t <= RATE_WINDOW_S), latest)
        variants: dict[str, dict] = {}
        for name in sorted(set(latest.requests) | {v for _, v in latest.routed}):
            stored = list(self.samples)  # evenly spaced: the live reading would add a spike
            series = [
                round(_delta(a.requests, b.requests, name) / (b.t - a.t), 4)
                for a, b in zip(stored, stored[1:], strict=False)
                if b.t > a.t
            ]
            span = latest.t - minute_ago.t
            variants[name] = {
                "rate_per_s": round(_delta(minute_ago.requests, latest.requests, name) / span, 4)
                if span > 0
                else None,
                "requests": int(_delta(first.requests, latest.requests, name)),
                "series": series,
            }
        split: dict[str, dict[str, int]] = {}
        for key in latest.routed:
            routed = int(_delta(first.routed, latest.routed, key))
            if routed:
                split.setdefault(key[0], {})[key[1]] = routed
        return {
            "available": True,
            "interval_s": self.interval_s,
            "window_s": round(latest.t - first.t, 1),
            "rate_window_s": round(latest.t - minute_ago.t, 1),
            "variants": variants,
            "routing": split,  # policy -> variant -> requests routed within the window
        }


def _delta(before: dict, after: dict, key) -> float:
    # A series missing from the earlier sample was created since then, so it started at 0.
    return max(after.get(key, 0.0) - before.get(key, 0.0), 0.0)
