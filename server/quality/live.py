"""A variant's quality against the base on live traffic: running sums over scored requests, and
a 95 % interval of top-1 agreement.

Agreement is pooled over answer positions (agreeing positions / scored positions), as the
card's chat agreement is. Positions of one answer are not independent (one early divergence
shifts the rest), so the interval treats the request as the unit: the ratio estimator's
normal approximation with its variance from the per-request residuals a_i - R t_i (the delta
method, clustered by request). Only running sums are kept (O(1) memory however long the
gateway runs), which is why it is this interval and not a bootstrap.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

Z95 = 1.959963984540054


@dataclass
class LiveQuality:
    """Scored requests of one variant since `since` (Unix time of the first)."""

    n: int = 0  # scored requests
    tokens: int = 0  # scored answer positions, all requests together
    agree: int = 0  # positions where both models' most likely token is the same
    kl_sum: float = 0.0  # KL(base || variant) summed over positions, nats
    since: float | None = None
    # For the interval: sums of a_i^2, t_i^2 and a_i t_i over requests.
    sum_a2: float = 0.0
    sum_t2: float = 0.0
    sum_at: float = 0.0

    def add(self, tokens: int, agree: int, kl_sum: float, now: float | None = None) -> None:
        """One scored request: `tokens` answer positions, `agree` of them agreeing."""
        if tokens <= 0:
            return
        if self.since is None:
            self.since = time.time() if now is None else now
        self.n += 1
        self.tokens += tokens
        self.agree += agree
        self.kl_sum += kl_sum
        self.sum_a2 += agree * agree
        self.sum_t2 += tokens * tokens
        self.sum_at += agree * tokens

    @property
    def top1_agreement(self) -> float | None:
        return self.agree / self.tokens if self.tokens else None

    @property
    def kl(self) -> float | None:
        """Mean KL(base || variant) per answer position, nats (over the top-k: compare.py)."""
        return self.kl_sum / self.tokens if self.tokens else None

    def ci95(self) -> tuple[float, float] | None:
        """95 % interval of top-1 agreement, clipped to [0, 1]; None below 2 requests.

        When every request agrees equally often (no spread between requests) the interval
        has no width: it says what was seen, not more.
        """
        if self.n < 2 or not self.tokens:
            return None
        r = self.agree / self.tokens
        residuals = max(0.0, self.sum_a2 - 2 * r * self.sum_at + r * r * self.sum_t2)
        variance = self.n / (self.n - 1) * residuals / (self.tokens * self.tokens)
        half = Z95 * math.sqrt(variance)
        return max(0.0, r - half), min(1.0, r + half)

    def view(self) -> dict:
        """What GET /v1/variants shows as `live_quality`."""
        interval = self.ci95()
        agreement, kl = self.top1_agreement, self.kl
        return {
            "n": self.n,
            "tokens": self.tokens,
            "top1_agreement": None if agreement is None else round(agreement, 6),
            "kl": None if kl is None else round(kl, 6),
            "ci95": None if interval is None else [round(x, 6) for x in interval],
            "since": None if self.since is None else round(self.since, 3),
        }
