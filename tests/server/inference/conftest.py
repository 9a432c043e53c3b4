from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from tests.server.fake_engine import serve_in_thread
from tests.server.inference.fake_vllm import FakeVllm, Harness, gateway


@pytest.fixture
def serve(tmp_path) -> Callable:
    """serve({name: FakeVllm}, **settings) -> (url, harness): the gateway on a real socket."""

    @contextmanager
    def start(engines: dict[str, FakeVllm], **settings) -> Iterator[tuple[str, Harness]]:
        harness = gateway(tmp_path, engines, **settings)
        with serve_in_thread(harness.app) as url:
            yield url, harness

    return start


async def settled(harness: Harness, timeout_s: float = 5.0) -> dict[str, float]:
    """The open counts once every one is back at zero (fails with them when one is not)."""
    deadline = time.monotonic() + timeout_s
    while any(harness.open_counts().values()) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    counts = harness.open_counts()
    assert not any(counts.values()), f"left open: {counts}"
    return counts
