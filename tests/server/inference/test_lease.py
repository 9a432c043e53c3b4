"""The lease's own duties, against a FAKE vLLM (fake_vllm.py): the admission limit learns from
a stream still waiting past the TTFT target (the routing snapshot no longer does, and changes
nothing), and only the attempt that answers the client becomes the request's outcome."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from server.backends.lease import Books, RequestInfo, Retryable
from server.inference import forward
from server.metrics.registry import Metrics
from server.routing.service import backend_state
from tests.server.inference.conftest import settled
from tests.server.inference.fake_vllm import BASE, VARIANT, FakeVllm, gateway

SLO_TTFT_S = 0.1


def chat() -> dict:
    return {"model": BASE, "messages": [{"role": "user", "content": "hi"}], "stream": True}


async def test_a_stream_waiting_past_the_target_cuts_the_admission_limit(serve):
    gate = threading.Event()
    with serve({BASE: FakeVllm(gate=gate)}, routing={"slo": {"ttft_s": SLO_TTFT_S}}) as (url, h):
        admission = h.backend(BASE).admission
        before = admission.limit
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            waiting = asyncio.create_task(client.post("/v1/chat/completions", json=chat()))
            await asyncio.sleep(3 * SLO_TTFT_S)
            assert admission.limit == pytest.approx(before * admission.decrease), (
                "a stream waiting past 0.8 x the SLO is a slow sample before its answer comes"
            )
            gate.set()
            assert (await waiting).status_code == 200
        await settled(h)
        # Its late first token is the same sample: sent before the cut, it cuts no further.
        assert admission.limit == pytest.approx(before * admission.decrease)


def test_the_routing_snapshot_changes_nothing(tmp_path):
    h = gateway(tmp_path, {BASE: FakeVllm()}, routing={"slo": {"ttft_s": SLO_TTFT_S}})
    backend = h.backend(BASE)
    backend.stats.start_waiting(now=time.monotonic() - 10)  # waiting far past the target
    limit = backend.admission.limit
    state = backend_state(backend, h.state.settings, None)
    assert backend.admission.limit == limit
    assert state.ttft_s >= 10, "the snapshot still sees the wait"


async def test_only_the_attempt_that_answers_is_the_outcome(tmp_path):
    h = gateway(tmp_path, {BASE: FakeVllm(mode="error"), VARIANT: FakeVllm()})
    records = []
    books = Books(Metrics(), SLO_TTFT_S, records.append)
    info = RequestInfo("req-1", "user-1", "exp", "arm-b")
    body = {"model": BASE, "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(Retryable):
        async with h.backend(BASE).lease("chat", info, books) as lease:
            await forward.complete(lease, "/v1/chat/completions", dict(body), {})
    assert records == [], "a failed attempt that another candidate retries is not recorded"
    async with h.backend(VARIANT).lease("chat", info, books) as lease:
        await forward.complete(lease, "/v1/chat/completions", dict(body), {})
    (outcome,) = records
    assert (outcome.request_id, outcome.variant, outcome.arm) == ("req-1", VARIANT, "arm-b")
    assert outcome.error is None and outcome.completion_tokens == 2
    assert lease.finish(200) is None, "a lease finishes once"
    assert h.backend(BASE).in_flight == h.backend(VARIANT).in_flight == 0
