"""The engines' own vLLM series (queue depth, running requests, KV-cache use), re-exported under
the variant label so one scrape of the gateway shows every variant, local or remote."""

from __future__ import annotations

import asyncio
import contextlib

from prometheus_client.parser import text_string_to_metric_families

from server.backends.engine_client import EngineError

# vLLM series -> our gauge attribute on Metrics
WANTED = {
    "vllm:num_requests_waiting": "engine_queue",
    "vllm:num_requests_running": "engine_running",
    "vllm:kv_cache_usage_perc": "engine_kv_cache",
}


def parse(text: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in WANTED:
                values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


async def refresh(registry, metrics, timeout_s: float = 1.0) -> None:
    """Scrape every ready engine's /metrics at once; an engine that does not answer is skipped."""

    async def one(name, backend):
        if not backend.ready:
            return
        with contextlib.suppress(EngineError, ValueError):
            text = await backend.client.metrics_text(timeout_s)
            # vLLM's exposition is hundreds of lines: parse it off the event loop.
            values = await asyncio.to_thread(parse, text)
            for series, value in values.items():
                getattr(metrics, WANTED[series]).labels(name).set(value)

    await asyncio.gather(*(one(n, b) for n, b in list(registry.backends.items())))
