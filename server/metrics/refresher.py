"""Collect the slow series in the background, so that a scrape never waits for them.

The slow series are the resource collector's (a scan of every process for the engines' groups,
NVML, RAPL) and the engines' own vLLM series (an HTTP call to each engine). Collected while
Prometheus waited, on the event loop, they cost every request in flight ~56 ms per scrape (up
to 344 ms). Now a task collects them every `metrics_refresh_s`: the process scan in a worker
thread, the engine calls as ordinary awaits; a scrape serves the latest collection.
"""

from __future__ import annotations

import asyncio
import logging

from server.metrics import engine_stats

log = logging.getLogger("leanserve.metrics")


class CachedCollector:
    """A prometheus_client collector that yields what `inner` yielded at the last refresh()."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.families: list = []

    def refresh(self) -> None:
        """Run the inner collector (blocking: call it in a worker thread)."""
        self.families = list(self.inner.collect())

    def collect(self):
        return iter(self.families)


async def refresh_forever(
    collector: CachedCollector | None, registry, metrics, every_s: float
) -> None:
    """Until cancelled: refresh the engines' series and the collector every `every_s` s."""
    while True:
        try:
            await engine_stats.refresh(registry, metrics)
            if collector is not None:
                await asyncio.to_thread(collector.refresh)
        except Exception:  # a failed collection keeps the last one; the next may succeed
            log.exception("collecting the engine and machine series failed")
        await asyncio.sleep(every_s)
