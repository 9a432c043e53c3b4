"""One request on one backend, from before anything is sent to the engine until its one finish.

`async with backend.lease(kind, request, books) as lease:` is the only place that counts a
request: the backend's in-flight count and gauge (streams still waiting for their first token
included), the wait for the first token (live stats and admission), the breaker, and, at the
finish, the requests counter, the latency histograms, the live averages and the experiment's
outcome record. The lease finishes exactly once: at the end of the `async with`, or, for a
stream handed over to the relay, when the relay ends it, however the stream ends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from server.backends.engine_client import EngineClient
from server.errors import APIError
from server.limits import StreamSlot
from server.metrics.registry import Metrics

if TYPE_CHECKING:
    from server.backends.registry import Backend


@dataclass
class Outcome:
    """What happened to a request, for experiments and metrics."""

    request_id: str
    experiment: str | None
    arm: str | None
    variant: str
    user: str | None
    latency_s: float
    ttft_s: float | None
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    error: str | None


@dataclass(frozen=True)
class RequestInfo:
    """Who asked, and the experiment arm the request serves; the same on every candidate."""

    request_id: str
    user: str | None = None
    experiment: str | None = None
    arm: str | None = None


@dataclass(frozen=True)
class Books:
    """Where a lease's counts go: the gateway's metrics, the TTFT target, the experiments."""

    metrics: Metrics
    slo_ttft_s: float
    record: Callable[[Outcome], None]


class Retryable(Exception):
    """The backend failed before anything reached the client: another one may serve it.

    `status` is the requests counter's label for this attempt (default: the error's status).
    """

    def __init__(self, error: APIError, why: str, status: int | None = None):
        super().__init__(error.message)
        self.error = error
        self.why = why
        self.status = status or error.status


class Lease:
    """See the module's docstring; made by Backend.lease()."""

    def __init__(
        self,
        backend: Backend,
        kind: str,
        request: RequestInfo,
        books: Books,
        slot: StreamSlot | None = None,
    ) -> None:
        self.backend = backend
        self.kind = kind  # "chat" or "completions": the requests counter's `route` label
        self.request = request
        self.books = books
        self.stream = slot is not None
        self._slot = slot
        self.started = time.perf_counter()
        self.first_token_at: float | None = None  # perf_counter: the first event sent on
        self.last_token_at: float | None = None  # streams: when the previous token was sent
        self._sent_at = time.monotonic()
        self._ticket: int | None = None
        self._late: asyncio.TimerHandle | None = None
        self._result: tuple[dict | None, str | None] | None = None  # (usage, finish_reason)
        self._handed_over = False
        self.finished = False

    @property
    def client(self) -> EngineClient:
        return self.backend.client

    async def __aenter__(self) -> Lease:
        backend = self.backend
        backend.in_flight += 1
        self.books.metrics.in_flight.labels(backend.name).inc()
        if self.stream:
            self._ticket = backend.stats.start_waiting()
            # A stream waiting past the target is a slow sample already: the admission limit
            # is cut when that happens, not only once the slow answer arrives.
            target = backend.admission.headroom * self.books.slo_ttft_s
            loop = asyncio.get_running_loop()
            self._late = loop.call_later(target * 1.001 + 0.001, self._still_waiting)
        return self

    async def __aexit__(self, kind, exc, tb) -> None:
        if self.finished or (exc is None and self._handed_over):
            return
        if exc is None:
            usage, finish = self._result or (None, None)
            self.finish(200, usage, finish)
        elif isinstance(exc, Retryable):
            # The next candidate's outcome is the one that counts.
            self.backend.breaker.failure()
            self.finish(exc.status, error=str(exc.status), final=False)
        elif isinstance(exc, APIError):
            self.finish(exc.status, error=str(exc.status))
        elif isinstance(exc, asyncio.CancelledError):
            self.finish(499, error="499")  # nginx's code for a client that left
        else:
            self.finish(500, error="500")

    def _still_waiting(self) -> None:
        now = time.monotonic()
        self.backend.admission.still_waiting(
            now - self._sent_at, self._sent_at, self.books.slo_ttft_s, now
        )

    def _stop_waiting(self) -> None:
        if self._late is not None:
            self._late.cancel()
            self._late = None
        if self._ticket is not None:
            self.backend.stats.first_token(self._ticket)
            self._ticket = None

    def first_event(self) -> None:
        """A stream's first event came from the engine: a time-to-first-token sample for
        admission, and the engine works."""
        self._stop_waiting()
        backend = self.backend
        backend.admission.observe(
            time.monotonic() - self._sent_at,
            self._sent_at,
            backend.in_flight,
            self.books.slo_ttft_s,
        )
        backend.breaker.success()

    def event_sent(self, token: bool) -> None:
        """A stream's event goes to the client; `token`: it carries a choice (not the usage
        chunk or [DONE]). The gaps between tokens are the engine's step time as it is now."""
        now = time.perf_counter()
        if self.first_token_at is None:
            self.first_token_at = now
        if token:
            if self.last_token_at is not None:
                self.backend.stats.observe_token_gap(now - self.last_token_at)
            self.last_token_at = now

    def succeeded(self, usage: dict | None, finish_reason: str | None) -> None:
        """A whole (non-streamed) answer came: finished with 200 at the end of the block."""
        self.backend.breaker.success()
        self._result = (usage, finish_reason)

    def engine_broke(self) -> None:
        """The engine broke off a stream that was under way."""
        self.backend.breaker.failure()

    def hand_over(self) -> None:
        """The relay finishes this lease when its stream ends: leaving the block does not."""
        self._handed_over = True

    def finish(
        self,
        status: int,
        usage: dict | None = None,
        finish_reason: str | None = None,
        error: str | None = None,
        final: bool = True,
    ) -> Outcome | None:
        """Count the request once; `final` is False for an attempt another candidate retries
        (its outcome is not the request's). Returns the outcome; None when already finished."""
        if self.finished:
            return None
        self.finished = True
        backend, metrics = self.backend, self.books.metrics
        self._stop_waiting()
        backend.in_flight -= 1
        metrics.in_flight.labels(backend.name).dec()
        if final and self._slot is not None:
            self._slot.release()
        metrics.requests.labels(backend.name, self.kind, str(status)).inc()
        outcome = self._outcome(usage, finish_reason, error)
        metrics.request_seconds.labels(backend.name, self.kind).observe(outcome.latency_s)
        metrics.record_usage(backend.name, usage)
        tpot = None
        if outcome.completion_tokens > 1:
            since = self.first_token_at or self.started
            tpot = (time.perf_counter() - since) / (outcome.completion_tokens - 1)
            metrics.tpot_seconds.labels(backend.name).observe(tpot)
        if outcome.ttft_s is not None:
            metrics.ttft_seconds.labels(backend.name).observe(outcome.ttft_s)
        if error is None:
            # A stream's time per output token was already observed token by token.
            backend.stats.observe(outcome.ttft_s, None if self.last_token_at else tpot)
        if self.request.experiment and final:
            self.books.record(outcome)
        return outcome

    def _outcome(self, usage: dict | None, finish: str | None, error: str | None) -> Outcome:
        usage = usage or {}
        ttft = self.first_token_at - self.started if self.first_token_at else None
        return Outcome(
            request_id=self.request.request_id,
            experiment=self.request.experiment,
            arm=self.request.arm,
            variant=self.backend.name,
            user=self.request.user,
            latency_s=time.perf_counter() - self.started,
            ttft_s=ttft,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            finish_reason=finish,
            error=error,
        )
