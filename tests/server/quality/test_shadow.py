"""Shadow scoring's own logic, without engines: which requests are sampled (rate 0 is never),
which variants an answer is compared with, the bounded queue and its drop count, scoring only
on spare capacity, a worker that survives failures and stops at once. Reading back on real
engines is tests/server/test_live_quality_e2e.py."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from server.inference.protocol import ChatCompletionRequest, CompletionRequest
from server.metrics.registry import Metrics
from server.placement.plan import Placement
from server.quality.capture import Answer
from server.quality.compare import Comparison
from server.quality.settings import QualitySettings
from server.quality.shadow import Shadow
from server.quality.teacher import ScoringError
from tests.server.quality.helpers import BASE, W4A16, W8A8, backend, registry

CHAT = ChatCompletionRequest(model=BASE, messages=[{"role": "user", "content": "hi"}])


def shadow(*backends, **settings) -> Shadow:
    reg = registry(*(backends or (backend(BASE), backend(W8A8))))
    return Shadow(QualitySettings(**settings), reg, Metrics(), random.Random(7))


def dropped(s: Shadow, reason: str) -> float:
    value = s.metrics.registry.get_sample_value(
        "leanserve_live_quality_dropped_total", {"reason": reason}
    )
    return value or 0.0


def test_rate_zero_never_samples_and_starts_no_worker():
    s = shadow(shadow_rate=0.0)
    assert all(s.sample(CHAT) is None for _ in range(10_000))
    asyncio.run(s.start())
    assert s._worker is None


def test_rate_one_always_samples_and_a_fraction_samples_about_that_share():
    s = shadow(shadow_rate=1.0)
    assert all(s.sample(CHAT) is not None for _ in range(1000))
    s = shadow(shadow_rate=0.25)
    share = sum(s.sample(CHAT) is not None for _ in range(20_000)) / 20_000
    assert 0.23 < share < 0.27, share


def test_nothing_is_sampled_without_something_to_compare_with():
    assert shadow(backend(BASE), shadow_rate=1.0).sample(CHAT) is None, "the base alone"
    lone = shadow(backend(BASE), backend(W8A8, ready=False), shadow_rate=1.0)
    assert lone.sample(CHAT) is None, "its only variant still starting"
    down = shadow(backend(BASE, ready=False), backend(W8A8), shadow_rate=1.0)
    assert down.sample(CHAT) is None, "the base down"
    echo = CompletionRequest(model=BASE, prompt="x", echo=True)
    assert shadow(shadow_rate=1.0).sample(echo) is None, "an answer holding its prompt"


def test_an_answer_of_the_base_goes_to_every_ready_variant_a_variants_to_itself():
    s = shadow(backend(BASE), backend(W8A8), backend(W4A16), backend("m:x", ready=False))
    assert [b.name for b in s.partners(BASE)] == [W8A8, W4A16]
    assert [b.name for b in s.partners(W8A8)] == [W8A8], "compared with the base, no other"
    s.registry.backends[W4A16].accepting = False  # retiring
    assert [b.name for b in s.partners(BASE)] == [W8A8]
    assert s.partners(W4A16) == []


def test_a_full_queue_drops_and_counts():
    s = shadow(shadow_rate=1.0, shadow_queue=3)
    results = [s.submit(Answer(CHAT, served=BASE)) for _ in range(5)]
    assert results == [True, True, True, False, False]
    assert s.queue.qsize() == 3 and dropped(s, "queue_full") == 2
    assert dropped(s, "busy") == 0, "every reason's series exists from the start"


async def test_no_scoring_while_the_engine_is_busy():
    base, w8a8 = backend(BASE), backend(W8A8)
    s = shadow(base, w8a8, shadow_rate=1.0, shadow_max_in_flight=1, shadow_wait_s=0.2)
    base.in_flight = 2
    answer = Answer(CHAT, served=BASE, chunks=[b'{"choices":[{"message":{"content":"hi"},'
                                               b'"finish_reason":"stop"}]}'])  # fmt: skip
    started = time.monotonic()
    with pytest.raises(ScoringError) as exc:
        await s.score(answer)
    assert exc.value.reason == "busy" and time.monotonic() - started >= 0.2
    # Nothing was sent: a call to the engine (the discard port) would have failed instead.


async def test_scoring_starts_once_the_engine_has_room():
    base, w8a8 = backend(BASE), backend(W8A8)
    s = shadow(base, w8a8, shadow_rate=1.0, shadow_max_in_flight=0, shadow_wait_s=5)
    base.in_flight = 1

    async def free_soon():
        await asyncio.sleep(0.2)
        base.in_flight = 0

    freeing = asyncio.create_task(free_soon())
    started = time.monotonic()
    await s._room(base)
    assert 0.15 <= time.monotonic() - started < 2
    await freeing


async def test_an_idle_variant_on_the_base_core_waits_for_the_base_to_be_idle_too():
    """On a 2-core machine the variants compute on the base's core: a read-back on an idle
    variant would slow the base's clients as much as one on the base."""
    base, w8a8, w4a16 = backend(BASE), backend(W8A8), backend(W4A16)
    w8a8.engine.placement = Placement(W8A8, "variant", "cpu", cores=(1,), shares_with=(BASE,))
    s = shadow(base, w8a8, w4a16, shadow_rate=1.0, shadow_wait_s=0.2)
    assert s.settings.shadow_max_in_flight == 0, "by default scoring uses idle time only"
    base.in_flight = 1
    with pytest.raises(ScoringError) as exc:
        await s._room(w8a8)
    assert exc.value.reason == "busy" and f"{BASE}: 1" in str(exc.value)
    await s._room(w4a16)  # on cores of its own (no placement says otherwise): room at once
    base.in_flight = 0
    await s._room(w8a8)


async def test_the_worker_counts_each_failure_and_goes_on(monkeypatch):
    s = shadow(shadow_rate=1.0)
    seen = []

    async def score(answer):
        seen.append(answer.served)
        if answer.served == "boom":
            raise RuntimeError("unexpected")
        if answer.served == "gone":
            raise ScoringError("no_answer")

    monkeypatch.setattr(s, "score", score)
    await s.start()
    for served in ("boom", "gone", BASE):
        s.submit(Answer(CHAT, served=served))
    for _ in range(100):
        if len(seen) == 3:
            break
        await asyncio.sleep(0.01)
    await s.stop()
    assert seen == ["boom", "gone", BASE]
    assert dropped(s, "failed") == 1 and dropped(s, "no_answer") == 1


async def test_stop_does_not_wait_for_an_answer_waiting_for_room():
    base, w8a8 = backend(BASE), backend(W8A8)
    s = shadow(base, w8a8, shadow_rate=1.0, shadow_wait_s=600)
    base.in_flight = 99
    body = b'{"choices":[{"message":{"content":"hi"},"finish_reason":"stop"}]}'
    await s.start()
    s.submit(Answer(CHAT, served=BASE, chunks=[body]))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await asyncio.wait_for(s.stop(), 2)
    assert time.monotonic() - started < 1


def test_a_comparison_moves_the_variants_figures_and_series():
    w8a8 = backend(W8A8)
    s = shadow(backend(BASE), w8a8)
    s.record(w8a8, Comparison(tokens=10, agree=8, kl_sum=1.0))
    s.record(w8a8, Comparison(tokens=10, agree=10, kl_sum=0.0))
    assert w8a8.live_quality.n == 2 and w8a8.live_quality.top1_agreement == 0.9
    value = s.metrics.registry.get_sample_value
    assert value("leanserve_live_quality_samples_total", {"variant": W8A8}) == 2
    gauge = {"variant": W8A8}
    assert value("leanserve_live_quality", {**gauge, "metric": "top1_agreement"}) == 0.9
    assert value("leanserve_live_quality", {**gauge, "metric": "kl"}) == 0.05
    low = value("leanserve_live_quality", {**gauge, "metric": "ci95_low"})
    high = value("leanserve_live_quality", {**gauge, "metric": "ci95_high"})
    assert low < 0.9 < high <= 1.0
