"""Soak: minutes at the engine's capacity with streaming clients that disconnect at random.

Checks what ops teams rely on: no errors beyond the planned disconnects, gateway memory flat
(resident set at the end within 10 % of after warm-up), and no leaked engine requests (vLLM's
running and waiting counts back to 0, the gateway's in-flight gauge back to 0).

    .venv/bin/python bench/soak.py [--seconds 300] [--concurrency 32] [--disconnect 0.3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loadgen import PROMPTS  # noqa: E402
from server.metrics.engine_stats import parse  # noqa: E402
from tests.server.gateway import REPO, start_gateway  # noqa: E402


async def soak(url: str, model: str, seconds: float, concurrency: int, p_disconnect: float) -> dict:
    rng = random.Random(0)
    counts = {"sent": 0, "completed": 0, "disconnected": 0, "errors": 0, "5xx": 0}
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def worker(w: int) -> None:
            while time.monotonic() < deadline:
                body = {
                    "model": model,
                    "messages": [
                        {"role": "user", "content": PROMPTS[counts["sent"] % len(PROMPTS)]}
                    ],
                    "max_tokens": 64,
                    "stream": True,
                }
                counts["sent"] += 1
                leave_after = rng.randint(1, 30) if rng.random() < p_disconnect else None
                try:
                    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
                        if r.status_code != 200:
                            counts["errors"] += 1
                            counts["5xx"] += r.status_code >= 500
                            await r.aread()
                            continue
                        chunks, failed = 0, False
                        async for line in r.aiter_lines():
                            if line.startswith("data: {"):
                                chunks += 1
                                failed |= '"error"' in line
                            if leave_after is not None and chunks >= leave_after:
                                break  # the planned disconnect: close mid-stream
                        if leave_after is not None and chunks >= leave_after:
                            counts["disconnected"] += 1
                        elif failed:
                            counts["errors"] += 1
                        else:
                            counts["completed"] += 1
                except httpx.HTTPError:
                    counts["errors"] += 1

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return counts


def rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--disconnect", type=float, default=0.3)
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/soak.json")
    args = parser.parse_args()
    home = Path(os.environ.get("LEANSERVE_HOME", REPO / ".leanserve"))
    gw = start_gateway(
        home, Path(tempfile.mkdtemp()) / "gateway.log", extra_env={"LEANSERVE_VARIANTS": "[]"}
    )
    try:
        gw.wait_ready()
        model = next(iter(gw.ready_info()["engines"]))
        engine_url = gw.engine(model)["url"]
        asyncio.run(soak(gw.url, model, 20, args.concurrency, args.disconnect))  # warm-up
        start_rss = rss(gw.proc.pid)
        samples = []

        async def run() -> dict:
            async def sample() -> None:
                while True:
                    samples.append(rss(gw.proc.pid))
                    await asyncio.sleep(10)

            sampler = asyncio.create_task(sample())
            counts = await soak(gw.url, model, args.seconds, args.concurrency, args.disconnect)
            sampler.cancel()
            return counts

        counts = asyncio.run(run())
        time.sleep(5)
        end_rss = rss(gw.proc.pid)
        engine = parse(httpx.get(f"{engine_url}/metrics", timeout=10).text)
        gateway_metrics = httpx.get(f"{gw.url}/metrics", timeout=10).text
        in_flight = sum(
            float(line.split()[-1])
            for line in gateway_metrics.splitlines()
            if line.startswith("leanserve_requests_in_flight{")
        )
    finally:
        gw.stop()
    result = {
        "seconds": args.seconds,
        "concurrency": args.concurrency,
        "disconnect_probability": args.disconnect,
        **counts,
        "gateway_rss_start_mb": round(start_rss / 2**20, 1),
        "gateway_rss_end_mb": round(end_rss / 2**20, 1),
        "gateway_rss_max_mb": round(max(samples + [end_rss]) / 2**20, 1),
        "memory_drift": round(end_rss / start_rss - 1, 4),
        "engine_running_after": engine.get("vllm:num_requests_running"),
        "engine_waiting_after": engine.get("vllm:num_requests_waiting"),
        "gateway_in_flight_after": in_flight,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
