"""Request limits: a rate per API key (429 + Retry-After) and concurrent streams (429); body and
header limits are in http_limits.py. The token bucket and the counters live in this process:
with several gateway replicas, each enforces its share (configure the per-replica rate)."""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from server.errors import APIError


@dataclass
class TokenBucket:
    rate_per_s: float
    burst: float
    tokens: float = -1.0
    updated: float = field(default_factory=time.monotonic)

    def take(self, now: float | None = None) -> float:
        """0 when a request may go now, else the seconds until it may."""
        now = time.monotonic() if now is None else now
        if self.tokens < 0:
            self.tokens = self.burst
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate_per_s)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate_per_s


class RateLimiter:
    """Token buckets per caller (an API key, or a client address): `per_minute` requests, with
    bursts up to that many. At `max_keys` buckets the least recently used one is forgotten,
    one at a time, so a flood of new callers cannot reset everyone's bucket."""

    def __init__(
        self,
        per_minute: int | None,
        max_keys: int = 100_000,
        message: str = "Rate limit of {per_minute} requests per minute reached.",
        code: str = "rate_limit_exceeded",
    ):
        self.per_minute = per_minute
        self.buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self.max_keys = max_keys
        self.message = message
        self.code = code

    def check(self, who: str) -> None:
        if self.per_minute is None:
            return
        # Keys are secrets: hold only a hash of each in memory.
        key = hashlib.sha256(who.encode()).hexdigest()[:32]
        bucket = self.buckets.get(key)
        if bucket is None:
            while len(self.buckets) >= self.max_keys:
                self.buckets.popitem(last=False)
            bucket = self.buckets[key] = TokenBucket(self.per_minute / 60, self.per_minute)
        else:
            self.buckets.move_to_end(key)
        wait = bucket.take()
        if wait > 0:
            raise APIError(
                429,
                self.message.format(per_minute=self.per_minute),
                "rate_limit_error",
                None,
                self.code,
                {"Retry-After": str(max(1, math.ceil(wait)))},
            )


class StreamSlot:
    """One of limits.max_concurrent_streams for one request: taken when a stream is admitted,
    given back once when it ends, however it ends (release() again is a no-op)."""

    def __init__(self, state) -> None:
        self.state = state  # has open_streams (server.state.AppState)
        self.held = False

    def take(self, limit: int | None) -> None:
        if limit is not None and self.state.open_streams >= limit:
            raise APIError(
                429,
                f"This server streams at most {limit} responses at once; retry shortly.",
                "rate_limit_error",
                None,
                "too_many_streams",
                {"Retry-After": "1"},
            )
        self.state.open_streams += 1
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.state.open_streams -= 1
