"""A small closed-loop streaming load generator for OpenAI-compatible servers (stdlib + httpx).

Each client sends streaming chat requests back to back; we record time to first token, total
time and generated tokens (from the usage chunk) per request.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import time
from dataclasses import dataclass, field

import httpx

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works.",
    "Describe a walk through a forest in autumn.",
    "What makes a good cup of tea?",
]


@dataclass
class Result:
    ttft_s: float
    total_s: float
    tokens: int
    status: int


@dataclass
class Round:
    label: str
    wall_s: float
    results: list[Result] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return sum(r.tokens for r in self.results) / self.wall_s

    @property
    def median_ttft_s(self) -> float:
        return statistics.median(r.ttft_s for r in self.results if r.status == 200)

    @property
    def errors(self) -> int:
        return sum(r.status != 200 for r in self.results)


async def one_request(
    client: httpx.AsyncClient, url: str, model: str, max_tokens: int, i: int
) -> Result:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
        "max_tokens": max_tokens,
        "ignore_eos": True,  # vLLM extension: every request generates exactly max_tokens
        "temperature": 0.8,
        "seed": i,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    ttft, tokens = None, 0
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            return Result(0.0, time.perf_counter() - started, 0, response.status_code)
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            if ttft is None:
                ttft = time.perf_counter() - started
            if '"usage":{' in line:
                tokens = json.loads(line[6:])["usage"]["completion_tokens"]
    return Result(ttft or 0.0, time.perf_counter() - started, tokens, 200)


async def run_round(
    label: str,
    url: str,
    model: str,
    concurrency: int,
    requests: int,
    max_tokens: int,
    headers: dict[str, str] | None = None,
    think_s: float = 0.0,
) -> Round:
    """`think_s`: each client pauses a random time (exponential, this mean) after each answer,
    as people do between chat turns: the engine has idle gaps (0: back to back)."""
    rng = random.Random(requests)  # the same pauses for every arm of a paired comparison
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    results: list[Result] = []
    limits = httpx.Limits(
        max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2
    )
    async with httpx.AsyncClient(timeout=300, limits=limits, headers=headers) as client:

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                results.append(await one_request(client, url, model, max_tokens, i))
                if think_s > 0:
                    await asyncio.sleep(rng.expovariate(1 / think_s))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return Round(label, wall, results)


def paired_ratio(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Mean of the per-round ratios a[i] / b[i] and its 95 % t-interval (low, high).

    Round i of each arm ran back to back, so slow drift of a shared machine cancels in the ratio.
    """
    from scipy import stats

    ratios = [x / y for x, y in zip(a, b, strict=True)]
    mean = statistics.fmean(ratios)
    if len(ratios) < 2:
        return mean, float("nan"), float("nan")
    half = stats.t.ppf(0.975, len(ratios) - 1) * statistics.stdev(ratios) / len(ratios) ** 0.5
    return mean, mean - half, mean + half


def cores_besides(engine_cpus: list[int]) -> list[int]:
    """The cores this process may use that are not the engines': where a bench keeps its
    client and gateways, as they would be on hosts of their own."""
    others = sorted(os.sched_getaffinity(0) - set(engine_cpus))
    if not others:
        raise SystemExit("--engine-cpus must leave a core for the client and the gateway")
    return others
