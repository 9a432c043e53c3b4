"""Request limits: body size (413), a rate per API key (429 + Retry-After) and concurrent
streams (429). The token bucket and the counters live in this process: with several gateway
replicas, each enforces its share (configure the per-replica rate)."""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Receive, Scope, Send

from server.errors import APIError, error_body


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
    def __init__(self, per_minute: int | None, max_keys: int = 100_000):
        self.per_minute = per_minute
        self.buckets: dict[str, TokenBucket] = {}
        self.max_keys = max_keys

    def check(self, who: str) -> None:
        if self.per_minute is None:
            return
        # Keys are secrets: hold only a hash of each in memory.
        key = hashlib.sha256(who.encode()).hexdigest()[:32]
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= self.max_keys:
                self.buckets.clear()  # bounded memory; at worst a burst is forgiven
            bucket = self.buckets[key] = TokenBucket(self.per_minute / 60, self.per_minute)
        wait = bucket.take()
        if wait > 0:
            raise APIError(
                429,
                f"Rate limit of {self.per_minute} requests per minute reached.",
                "rate_limit_error",
                None,
                "rate_limit_exceeded",
                {"Retry-After": str(max(1, math.ceil(wait)))},
            )


class BodySizeLimit:
    """Pure ASGI middleware: refuses bodies over `max_bytes` before reading them whole."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send)
        seen = 0

        async def counting_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, counting_receive, send)
        except _TooLarge:
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        import json

        body = json.dumps(
            error_body(
                f"Request body over {self.max_bytes} bytes.",
                "invalid_request_error",
                None,
                "body_too_large",
            )
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass
