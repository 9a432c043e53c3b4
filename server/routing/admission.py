"""How many requests a variant may have in flight and still answer within the TTFT SLO.

The slo policy sends a request only to a variant below its limit; when every variant is at its
limit, the request is shed (429) at once instead of joining a queue that would make it, and
everyone behind it, miss the SLO. No constant fits every model and machine, so the limit is
learned the way TCP learns a congestion window (AIMD):

- every streamed request's time to first token is a sample. One above `target` (a fraction of
  the SLO, to leave room for the requests already sent) cuts the limit by `decrease`, at most
  once per round trip: samples from requests sent before the last cut say nothing about it;
  A stream still waiting past the target counts as such a sample at once (its lease sets a
  timer for the target): a slowdown is seen before the slow answers arrive;
- a sample within target while the variant was at its limit raises the limit by 1 / limit, so
  about +1 per limit's worth of good answers. Below its limit a variant shows nothing about
  more load, so the limit does not grow there;
- until the first cut the limit grows by +1 per good sample instead (slow start: it doubles
  per round trip), so a fresh variant finds its level in a few round trips.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class ConcurrencyLimit:
    limit: float = 4.0
    floor: float = 1.0
    ceiling: float = 256.0
    headroom: float = 0.8  # target = headroom x SLO
    decrease: float = 0.7
    slow_start: bool = True
    cut_at: float = float("-inf")  # monotonic time of the last cut

    def allows(self, in_flight: int) -> bool:
        return in_flight < int(self.limit)

    def observe(
        self,
        ttft_s: float,
        sent_at: float,
        in_flight: int,
        slo_ttft_s: float,
        now: float | None = None,
    ) -> None:
        """One request's first token came `ttft_s` after it was sent at `sent_at` (monotonic),
        with `in_flight` requests (itself included) on the variant."""
        if ttft_s > self.headroom * slo_ttft_s:
            self._cut(sent_at, now)
            return
        if in_flight < int(self.limit):
            return
        step = 1.0 if self.slow_start else 1.0 / self.limit
        self.limit = min(self.ceiling, self.limit + step)

    def still_waiting(
        self, waited_s: float, sent_at: float, slo_ttft_s: float, now: float | None = None
    ) -> None:
        """The oldest stream without a first token has waited `waited_s`: past the target, that
        is a slow sample already; before it, it says nothing yet."""
        if waited_s > self.headroom * slo_ttft_s:
            self._cut(sent_at, now)

    def _cut(self, sent_at: float, now: float | None) -> None:
        if sent_at > self.cut_at:  # sent after the last cut: news about the current limit
            self.limit = max(self.floor, self.limit * self.decrease)
            self.cut_at = time.monotonic() if now is None else now
            self.slow_start = False
