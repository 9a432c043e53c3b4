"""A circuit breaker per variant: after `failures` errors in a row, keep it out for `cooldown_s`.

After the cool-down one request is let through (half-open); success closes the breaker, failure
opens it again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class Breaker:
    failures: int = 3
    cooldown_s: float = 30.0
    consecutive: int = 0
    opened_at: float | None = None

    def allows(self, now: float | None = None) -> bool:
        if self.opened_at is None:
            return True
        return (now if now is not None else time.monotonic()) - self.opened_at >= self.cooldown_s

    @property
    def open(self) -> bool:
        return self.opened_at is not None

    def success(self) -> None:
        self.consecutive = 0
        self.opened_at = None

    def trip(self, now: float | None = None) -> None:
        """Open at once: the engine is known to be down (its process exited)."""
        self.consecutive = self.failures
        self.opened_at = now if now is not None else time.monotonic()

    def failure(self, now: float | None = None) -> None:
        self.consecutive += 1
        if self.consecutive >= self.failures or self.opened_at is not None:
            self.opened_at = now if now is not None else time.monotonic()
