"""Shadow scoring: a sample of answers, once the client has them, read back by the other model.

Per answered request: with probability quality.shadow_rate (0: never) its answer is copied as
it is sent (capture.py) and, after its last byte, put on a bounded queue; when the queue is
full it is dropped and counted. One worker scores one answer at a time, and only while the
engine it needs has spare capacity (at most quality.shadow_max_in_flight client requests in
flight, by default none, on that engine and on every engine the placement plan has computing
on the same cores or GPU; it waits up to quality.shadow_wait_s, then drops the answer,
counted). Its calls are not client requests: they are not counted in flight and do not move
routing's statistics.

What is compared: live quality describes each variant against the base. An answer of the base
is read back by every ready variant; an answer of a variant by the base. Both sides read the
same token ids, so the base's distribution comes from its own read-back (compare.py), and each
comparison adds one request to the variant's figures (live.py). Answers of one variant are
never compared with another variant.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

from fastapi.responses import Response

from server.backends.engine_client import EngineError
from server.backends.registry import Backend, Registry
from server.inference.protocol import InferenceRequest
from server.metrics.registry import Metrics
from server.quality import capture, teacher
from server.quality.capture import Answer, answer_text
from server.quality.compare import Comparison, compare
from server.quality.settings import QualitySettings
from server.quality.teacher import ScoringError

log = logging.getLogger("leanserve.quality")

POLL_S = 0.05  # how often a waiting answer looks for spare capacity
CALL_TIMEOUT_S = 60.0  # one engine call (a read-back is one forward pass over the answer)
STOP_WAIT_S = 5.0
# Labels of leanserve_live_quality_dropped_total: why an answer (or one of its comparisons)
# was not scored.
DROP_REASONS = ("queue_full", "busy", "failed", "mismatch", "no_answer")


class Shadow:
    """Sampling, the bounded queue and the worker; made and started by the app."""

    def __init__(
        self,
        settings: QualitySettings,
        registry: Registry,
        metrics: Metrics,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = metrics
        self.rng = rng or random.Random()
        self.queue: asyncio.Queue[Answer] = asyncio.Queue(maxsize=settings.shadow_queue)
        self._worker: asyncio.Task | None = None
        for reason in DROP_REASONS:
            metrics.live_quality_dropped.labels(reason)

    # -- the request's side: no I/O, nothing awaited ------------------------------------------
    def sample(self, request: InferenceRequest) -> Answer | None:
        """An Answer to fill when this request is to be scored, else None."""
        rate = self.settings.shadow_rate
        if rate <= 0 or (rate < 1 and self.rng.random() >= rate):
            return None
        if not capture.scorable(request) or not self._comparable():
            return None
        return Answer(request)

    def follow(self, request: InferenceRequest, served: str, response: Response) -> None:
        """For a sampled request: copy its answer as it is sent, queue it once sent."""
        answer = self.sample(request)
        if answer is not None:
            capture.follow(answer, served, response, self.submit)

    def submit(self, answer: Answer) -> bool:
        """Queue an answer for scoring; False (and counted) when the queue is full."""
        try:
            self.queue.put_nowait(answer)
        except asyncio.QueueFull:
            self._drop("queue_full")
            return False
        return True

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        if self.settings.shadow_rate > 0:
            self._worker = asyncio.create_task(self._work(), name="shadow-scoring")

    async def stop(self) -> None:
        """Stop at once: an answer being scored is abandoned (its engine calls cancelled)."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            # Bounded: shutdown must not wait on scoring, whatever the worker is doing.
            await asyncio.wait({worker}, timeout=STOP_WAIT_S)

    async def _work(self) -> None:
        while True:
            answer = await self.queue.get()
            try:
                await self.score(answer)
            except ScoringError as exc:
                self._drop(exc.reason)
                log.debug("answer of %s not scored: %s", answer.served, exc)
            except Exception:  # one bad answer must not stop the worker
                self._drop("failed")
                log.exception("scoring an answer of %s failed", answer.served)

    # -- scoring ------------------------------------------------------------------------------
    def partners(self, served: str) -> list[Backend]:
        """The variants whose figures an answer of `served` adds to: every ready variant for
        an answer of the base, the variant itself for a variant's."""
        base = self.registry.base_name
        if served == base:
            return [b for n, b in self.registry.backends.items() if n != base and _serving(b)]
        backend = self.registry.backends.get(served)
        return [backend] if backend is not None and _serving(backend) else []

    async def score(self, answer: Answer) -> None:
        """Read the answer back on the base and on each partner, and record each comparison."""
        base = self.registry.backends.get(self.registry.base_name)
        partners = self.partners(answer.served)
        if base is None or not partners:
            return  # nothing left to compare with (a variant retired meanwhile)
        text = answer_text(answer)
        if text is None:
            raise ScoringError("no_answer")
        k = self.settings.shadow_top_k
        await self._room(base)
        try:
            ids, start = await _within(teacher.token_ids(base.client, base.name, answer, text))
            reference = await _within(teacher.read_back(base.client, base.name, ids, start, k))
        except (EngineError, TimeoutError, LookupError, TypeError, ValueError) as exc:
            raise ScoringError("failed", str(exc)) from exc
        for variant in partners:
            try:
                await self._room(variant)
                read = teacher.read_back(variant.client, variant.name, ids, start, k)
                self.record(variant, compare(reference, await _within(read)))
            except ScoringError as exc:
                self._drop(exc.reason)
            except (EngineError, TimeoutError, LookupError, TypeError, ValueError) as exc:
                self._drop("failed")
                log.debug("reading back on %s failed: %s", variant.name, exc)

    def record(self, variant: Backend, comparison: Comparison) -> None:
        live = variant.live_quality
        live.add(comparison.tokens, comparison.agree, comparison.kl_sum)
        self.metrics.live_quality_samples.labels(variant.name).inc()
        gauge = self.metrics.live_quality
        for metric, value in (("top1_agreement", live.top1_agreement), ("kl", live.kl)):
            if value is not None:
                gauge.labels(variant.name, metric).set(value)
        interval = live.ci95()
        if interval is not None:
            gauge.labels(variant.name, "ci95_low").set(interval[0])
            gauge.labels(variant.name, "ci95_high").set(interval[1])

    async def _room(self, backend: Backend) -> None:
        """Wait until `backend` has spare capacity; ScoringError("busy") past the wait."""
        deadline = time.monotonic() + self.settings.shadow_wait_s
        limit = self.settings.shadow_max_in_flight
        # On a shared core an idle engine is no spare capacity while a mate serves clients.
        group = [backend, *self.registry.core_mates(backend)]
        while not (_serving(backend) and all(b.in_flight <= limit for b in group)):
            if time.monotonic() >= deadline:
                busy = ", ".join(f"{b.name}: {b.in_flight}" for b in group)
                raise ScoringError("busy", f"in flight on {backend.name}'s cores: {busy}")
            await asyncio.sleep(POLL_S)

    def _comparable(self) -> bool:
        """The base and at least one variant are serving: there is something to compare."""
        base = self.registry.base_name
        backends = self.registry.backends
        return (
            base in backends
            and _serving(backends[base])
            and any(_serving(b) for n, b in backends.items() if n != base)
        )

    def _drop(self, reason: str) -> None:
        self.metrics.live_quality_dropped.labels(reason).inc()


def _serving(backend: Backend) -> bool:
    return backend.ready and backend.accepting and not backend.breaker.open


async def _within(call):
    # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation that
    # arrives as the call completes, and a worker that missed its cancel would hang stop().
    async with asyncio.timeout(CALL_TIMEOUT_S):
        return await call
