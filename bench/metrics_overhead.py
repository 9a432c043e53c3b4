"""Metrics overhead: gateway throughput while a real Prometheus scrapes it every second, against
the same gateway not scraped, rounds alternating in one run (issue 5: ratio >= 0.99).

What metrics cost a gateway is (a) the prometheus_client updates on each request's path and
(b) the scrapes (rendering the registry, refreshing the engines' vLLM stats, reading process
and GPU figures). (b) is switched here by reloading one Prometheus, which runs throughout, with
or without the gateway as a target. (a) has no switch in the gateway (no `metrics_enabled`
setting), so it is bounded instead: the exact calls the gateway makes per request are timed
in-process on the same Metrics class, and shown as a share of the gateway's CPU per request
measured in the same run.

Rounds alternate scraped / unscraped (the order flips each round) so that drift on a shared
machine hits both alike; the result is the ratio of median throughputs and the mean of the
paired per-round ratios with its 95 % interval. Prometheus runs on the same machine here, so
its own CPU (reported) competes with the engine: where it runs on another host, as in a
deployment, the cost to the gateway's machine is smaller than measured.

    .venv/bin/python bench/metrics_overhead.py [--rounds 8] [--concurrency 32] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loadgen import paired_ratio, run_round  # noqa: E402
from server.metrics.registry import Metrics  # noqa: E402
from tests.server.gateway import REPO, start_gateway  # noqa: E402
from tests.server.promserver import (  # noqa: E402
    config_for,
    prometheus_binary,
    start_prometheus,
)


def request_path_updates_us(n: int = 20000) -> float:
    """Microseconds of prometheus_client work per streamed request: the calls a request's
    lease (server/backends/lease.py) and the fallback loop make for it (routing, in flight,
    status, latency, usage, time to first token and per output token)."""
    m = Metrics()
    m.add_variant("v")
    usage = {"prompt_tokens": 12, "completion_tokens": 128}
    started = time.perf_counter()
    for _ in range(n):
        m.in_flight.labels("v").inc()
        m.in_flight.labels("v").dec()
        m.requests.labels("v", "chat", "200").inc()
        m.request_seconds.labels("v", "chat").observe(1.5)
        m.record_usage("v", usage)
        m.tpot_seconds.labels("v").observe(0.02)
        m.ttft_seconds.labels("v").observe(0.2)
        m.routing_decisions.labels("quality", "v", "default").inc()
    return (time.perf_counter() - started) / n * 1e6


def scrape_ms(url: str, n: int = 20) -> float:
    """Median time the gateway takes to answer GET /metrics."""
    times = []
    with httpx.Client(timeout=10) as client:
        for _ in range(n):
            started = time.perf_counter()
            client.get(f"{url}/metrics").raise_for_status()
            times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def group_cpu_s(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


def engine_processes(pgid: int) -> list[psutil.Process]:
    """The engine's processes: the group its API server leads (backends/engine_process.py)."""
    found = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid:
                found.append(p)
        except (ProcessLookupError, PermissionError):
            continue
    return found


def wait_no_target(prom, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while prom.target("leanserve") is not None:
        assert time.monotonic() < deadline, "Prometheus still scrapes the gateway"
        time.sleep(0.2)


def measure(gateway, model: str, binary: Path, workdir: Path, args) -> dict:
    gateway_proc = psutil.Process(gateway.proc.pid)
    engine = engine_processes(gateway.engine(model)["pid"])
    asyncio.run(run_round("warmup", gateway.url, model, args.concurrency, args.concurrency, 16))
    rounds: dict[str, list] = {"scraped": [], "unscraped": []}
    cpu: dict[str, list[float]] = {"scraped": [], "unscraped": []}
    engine_cpu: dict[str, list[float]] = {"scraped": [], "unscraped": []}
    scrapes: list[int] = []
    prom_cpu: dict[str, list[float]] = {"scraped": [], "unscraped": []}
    prom = start_prometheus(binary, workdir / "prometheus", gateway.url, lifecycle=True)
    prom_proc = psutil.Process(prom.proc.pid)
    scraping = config_for(gateway.url, int(prom.url.rsplit(":", 1)[1]))
    idle = {**scraping, "scrape_configs": []}
    try:
        for i in range(args.rounds):
            order = ("scraped", "unscraped") if i % 2 == 0 else ("unscraped", "scraped")
            for label in order:
                if label == "scraped":
                    prom.reload(scraping)
                    prom.wait_scrape_after(time.time())
                else:
                    prom.reload(idle)
                    wait_no_target(prom)
                p0, t0, e0 = group_cpu_s([prom_proc]), gateway_proc.cpu_times(), group_cpu_s(engine)
                r = asyncio.run(
                    run_round(
                        label, gateway.url, model, args.concurrency, args.requests, args.max_tokens
                    )
                )
                p1, t1, e1 = group_cpu_s([prom_proc]), gateway_proc.cpu_times(), group_cpu_s(engine)
                if label == "scraped":
                    window = f"{math.ceil(r.wall_s)}s"
                    samples = prom.query(f'count_over_time(up{{job="leanserve"}}[{window}])')
                    scrapes.append(int(float(samples[0]["value"][1])) if samples else 0)
                prom_cpu[label].append(p1 - p0)
                rounds[label].append(r)
                cpu[label].append((t1.user + t1.system) - (t0.user + t0.system))
                engine_cpu[label].append(e1 - e0)
                print(
                    f"round {i} {label:9s} {r.tokens_per_s:7.1f} tok/s  {r.wall_s:6.1f} s  "
                    f"gateway CPU {cpu[label][-1]:5.2f} s  "
                    f"engine CPU {engine_cpu[label][-1]:6.1f} s  errors {r.errors}",
                    flush=True,
                )
    finally:
        prom.stop()
    tps = {k: statistics.median(r.tokens_per_s for r in v) for k, v in rounds.items()}
    mean, low, high = paired_ratio(
        [r.tokens_per_s for r in rounds["scraped"]], [r.tokens_per_s for r in rounds["unscraped"]]
    )
    requests = args.requests
    # The CPU the scrapes add per round (gateway, Prometheus), as a share of the CPU the
    # machine had in a round: what a CPU-bound engine loses to them, without the throughput
    # noise of a shared machine.
    extra_cpu = (
        statistics.median(cpu["scraped"])
        - statistics.median(cpu["unscraped"])
        + statistics.median(prom_cpu["scraped"])
        - statistics.median(prom_cpu["unscraped"])
    )
    wall = statistics.median(r.wall_s for r in rounds["scraped"])
    cores = psutil.cpu_count()
    gateway_cpu_us = statistics.median(cpu["unscraped"]) / requests * 1e6
    updates_us = request_path_updates_us()
    return {
        "rounds": args.rounds,
        "concurrency": args.concurrency,
        "requests_per_round": requests,
        "max_tokens": args.max_tokens,
        "scrape_interval_s": 1,
        "scraped_tokens_per_s": round(tps["scraped"], 1),
        "unscraped_tokens_per_s": round(tps["unscraped"], 1),
        "throughput_ratio_scraped_over_unscraped": round(tps["scraped"] / tps["unscraped"], 4),
        "paired_ratio_mean": round(mean, 4),
        "paired_ratio_95ci": [round(low, 4), round(high, 4)],
        "scraped_rounds_tokens_per_s": [round(r.tokens_per_s, 1) for r in rounds["scraped"]],
        "unscraped_rounds_tokens_per_s": [round(r.tokens_per_s, 1) for r in rounds["unscraped"]],
        "scrapes_per_scraped_round": scrapes,
        "gateway_cpu_s_per_round_scraped": round(statistics.median(cpu["scraped"]), 3),
        "gateway_cpu_s_per_round_unscraped": round(statistics.median(cpu["unscraped"]), 3),
        "prometheus_cpu_s_per_round_scraped": round(statistics.median(prom_cpu["scraped"]), 3),
        "prometheus_cpu_s_per_round_unscraped": round(statistics.median(prom_cpu["unscraped"]), 3),
        "engine_cpu_s_per_round_scraped": round(statistics.median(engine_cpu["scraped"]), 2),
        "engine_cpu_s_per_round_unscraped": round(statistics.median(engine_cpu["unscraped"]), 2),
        "cpu_cores": cores,
        "scrape_cpu_share_of_machine": round(extra_cpu / (cores * wall), 4),
        "metrics_scrape_ms": round(scrape_ms(gateway.url), 2),
        "request_path_metric_updates_us": round(updates_us, 2),
        "gateway_cpu_us_per_request": round(gateway_cpu_us, 1),
        "request_path_metrics_share_of_gateway_cpu": round(updates_us / gateway_cpu_us, 4),
        "errors": sum(r.errors for v in rounds.values() for r in v),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/metrics_overhead.json")
    args = parser.parse_args()
    binary = prometheus_binary()
    home = Path(os.environ.get("LEANSERVE_HOME", REPO / ".leanserve"))
    workdir = Path(tempfile.mkdtemp(prefix="metrics_overhead-"))
    gateway = start_gateway(home, workdir / "gateway.log", extra_env={"LEANSERVE_VARIANTS": "[]"})
    try:
        gateway.wait_ready()
        model = next(iter(gateway.ready_info()["engines"]))
        result = measure(gateway, model, binary, workdir, args)
    finally:
        gateway.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
