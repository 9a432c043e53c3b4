"""Live latency per variant: exponentially weighted moving averages of what the gateway measures.

The latency and slo policies predict from these, not from constants: a variant under load shows
it in its time to first token within a few requests. Queue depth is added on top, because the
average lags while a burst is still queued.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LiveStats:
    ttft_s: float | None = None
    tpot_s: float | None = None
    alpha: float = 0.2  # weight of the newest sample: ~5 requests of memory

    def observe(self, ttft_s: float | None, tpot_s: float | None) -> None:
        if ttft_s is not None:
            self.ttft_s = ttft_s if self.ttft_s is None else self._mix(self.ttft_s, ttft_s)
        if tpot_s is not None:
            self.tpot_s = tpot_s if self.tpot_s is None else self._mix(self.tpot_s, tpot_s)

    def _mix(self, old: float, new: float) -> float:
        return (1 - self.alpha) * old + self.alpha * new

    def predict(
        self, in_flight: int, prior_ttft_s: float, prior_tpot_s: float, slots: int
    ) -> tuple[float, float]:
        """Predicted (ttft, tpot) for one more request, given the requests in flight now.

        Beyond `slots` concurrent requests, each extra one waits for about one request's worth of
        time to first token: the engine batches up to its slots and queues the rest.
        """
        ttft = self.ttft_s if self.ttft_s is not None else prior_ttft_s
        tpot = self.tpot_s if self.tpot_s is not None else prior_tpot_s
        queued = max(0, in_flight + 1 - slots)
        return ttft * (1 + queued / max(slots, 1)), tpot
