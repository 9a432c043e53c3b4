"""Live latency per variant, from what the gateway measures.

The latency and slo policies predict from these, not from constants. Three signals:
- the time per output token, a moving average of the gaps between a stream's events, updated as
  they are relayed (non-streamed requests add their mean when they finish);
- a moving average of the time to first token of finished requests. Both averages fade back
  toward the card's figures while a variant serves nothing, because a variant that was skipped
  (or shed) for looking slow produces no new samples and would otherwise look slow forever;
- the age of the oldest streaming request still waiting for its first token. In a first-come
  first-served queue a request arriving now waits about as long as the head of the queue has
  waited so far, so this sees a backlog the moment it forms, where the averages only see it once
  the backlogged requests are served (the sojourn-time idea of CoDel, RFC 8289).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

_tickets = itertools.count()


def _ewma(average: float | None, sample: float, alpha: float) -> float:
    return sample if average is None else (1 - alpha) * average + alpha * sample


@dataclass
class LiveStats:
    ttft_s: float | None = None
    tpot_s: float | None = None
    alpha: float = 0.2  # weight of the newest sample: ~5 requests of memory
    gap_alpha: float = 0.05  # per event: dozens of events a second under load
    fade_half_life_s: float = 2.0
    observed_at: float | None = None  # monotonic time of the last sample
    waiting: dict[int, float] = field(default_factory=dict)  # ticket -> when it was sent

    def observe(self, ttft_s: float | None, tpot_s: float | None, now: float | None = None) -> None:
        if ttft_s is not None:
            self.ttft_s = _ewma(self.ttft_s, ttft_s, self.alpha)
        if tpot_s is not None:
            self.tpot_s = _ewma(self.tpot_s, tpot_s, self.alpha)
        self.observed_at = time.monotonic() if now is None else now

    def observe_token_gap(self, gap_s: float, now: float | None = None) -> None:
        """The time between two events of one stream: the engine's step time as it is now.

        Streams report it every token, so a slowing engine (a batch growing past what the
        machine can keep up with) shows within a step, long before those streams finish.
        """
        self.tpot_s = _ewma(self.tpot_s, gap_s, self.gap_alpha)
        self.observed_at = time.monotonic() if now is None else now

    def start_waiting(self, now: float | None = None) -> int:
        """A streaming request was sent; returns the ticket to hand to first_token()."""
        ticket = next(_tickets)
        self.waiting[ticket] = time.monotonic() if now is None else now
        return ticket

    def first_token(self, ticket: int) -> None:
        """Its first token came (or it ended without one)."""
        self.waiting.pop(ticket, None)

    def oldest_wait_s(self, now: float) -> float:
        oldest = self.oldest_sent_at()
        return 0.0 if oldest is None else now - oldest

    def oldest_sent_at(self) -> float | None:
        """When the oldest stream still waiting for its first token was sent (monotonic)."""
        return min(self.waiting.values(), default=None)

    def predict(
        self, prior_ttft_s: float, prior_tpot_s: float, now: float | None = None
    ) -> tuple[float, float]:
        """Predicted (ttft, tpot) for one more request."""
        now = time.monotonic() if now is None else now
        weight = 0.0
        if self.observed_at is not None:
            weight = 0.5 ** ((now - self.observed_at) / self.fade_half_life_s)

        def faded(average: float | None, prior: float) -> float:
            return prior if average is None else prior + (average - prior) * weight

        ttft = max(faded(self.ttft_s, prior_ttft_s), self.oldest_wait_s(now))
        return ttft, faded(self.tpot_s, prior_tpot_s)
