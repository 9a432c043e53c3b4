"""Metrics on against off (issue 5: gateway throughput ratio >= 0.99, same run).

One vLLM engine (`leanserve engine`, the base model) and two gateway processes in front of it
by URL: gateway "on" with metrics enabled and scraped by a real Prometheus (deploy/'s rules
and dashboards' recording load included, scrape interval --scrape-interval, the deploy default
15 s unless told), gateway "off" with `metrics_enabled: false` (every series a no-op, /metrics
404). Rounds of closed-loop streaming load alternate between the two gateways, the order
flipping each round, so the engine, the machine's drift and the prompts are the same for both;
the only difference is the metrics work. Reported: ratio of median throughputs and the mean of
the paired per-round ratios with its 95 % interval, plus each gateway's CPU per request.

    .venv/bin/python bench/metrics_onoff.py [--rounds 10] [--scrape-interval 15s]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loadgen import cores_besides, paired_ratio, run_round  # noqa: E402
from tests.server.gateway import REPO, start_engine, start_gateway, wait_health  # noqa: E402
from tests.server.promserver import prometheus_binary, start_prometheus  # noqa: E402

BASE = "smollm2-135m-instruct"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--scrape-interval", default="15s")
    parser.add_argument(
        "--engine-cpus",
        type=int,
        nargs="+",
        help="cores for the engine; the gateways, Prometheus and this client keep the others",
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/metrics_onoff.json")
    args = parser.parse_args()
    others = cores_besides(args.engine_cpus or [])
    binary = prometheus_binary()
    home = Path(os.environ.get("LEANSERVE_HOME", REPO / ".leanserve"))
    subprocess.run(
        [sys.executable, "-m", "server.basemodel", "--home", str(home)],
        check=True, cwd=REPO, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="metrics_onoff-"))
    # The engine inherits this process's cores at its start; what starts after it, the others.
    if args.engine_cpus:
        os.sched_setaffinity(0, args.engine_cpus)
    engine, url = start_engine(home, work / "engine.log")
    os.sched_setaffinity(0, others)
    wait_health(url, engine, timeout_s=900)
    gateways, prom = {}, None
    try:
        for label, enabled in (("on", True), ("off", False)):
            config = {"variants": [], "remote_engines": {BASE: url}, "metrics_enabled": enabled}
            (work / f"{label}.yaml").write_text(yaml.safe_dump(config))
            gateways[label] = start_gateway(
                home, work / f"gateway-{label}.log", args=["--config", str(work / f"{label}.yaml")]
            )
        for gw in gateways.values():
            gw.wait_ready()
        assert httpx.get(f"{gateways['off'].url}/metrics").status_code == 404
        prom = start_prometheus(
            binary, work / "prometheus", gateways["on"].url, interval=args.scrape_interval
        )
        prom.wait_scrape_after(time.time() - 1, timeout_s=120)
        procs = {k: psutil.Process(gw.proc.pid) for k, gw in gateways.items()}
        for gw in gateways.values():  # warm both paths (connections, first compilation)
            asyncio.run(run_round("warmup", gw.url, BASE, args.concurrency, args.concurrency, 16))
        tps: dict[str, list[float]] = {"on": [], "off": []}
        cpu: dict[str, list[float]] = {"on": [], "off": []}
        errors = 0
        for i in range(args.rounds):
            for label in ("on", "off") if i % 2 == 0 else ("off", "on"):
                gw = gateways[label]
                t0 = procs[label].cpu_times()
                r = asyncio.run(
                    run_round(label, gw.url, BASE, args.concurrency, args.requests, args.max_tokens)
                )
                t1 = procs[label].cpu_times()
                tps[label].append(r.tokens_per_s)
                cpu[label].append((t1.user + t1.system) - (t0.user + t0.system))
                errors += r.errors
                print(
                    f"round {i} metrics {label:3s} {r.tokens_per_s:7.1f} tok/s "
                    f"gateway CPU {cpu[label][-1]:5.2f} s errors {r.errors}",
                    flush=True,
                )
        scrapes = prom.value('count_over_time(up{job="leanserve"}[1h])')
    finally:
        if prom is not None:
            prom.stop()
        for gw in gateways.values():
            gw.stop()
        engine.terminate()
        engine.wait(60)
    mean, low, high = paired_ratio(tps["on"], tps["off"])
    result = {
        "rounds": args.rounds,
        "concurrency": args.concurrency,
        "requests_per_round": args.requests,
        "max_tokens": args.max_tokens,
        "scrape_interval": args.scrape_interval,
        "engine_cpus": args.engine_cpus,
        "on_tokens_per_s_median": round(statistics.median(tps["on"]), 1),
        "off_tokens_per_s_median": round(statistics.median(tps["off"]), 1),
        "ratio_of_medians_on_over_off": round(
            statistics.median(tps["on"]) / statistics.median(tps["off"]), 4
        ),
        "paired_ratio_mean": round(mean, 4),
        "paired_ratio_95ci": [round(low, 4), round(high, 4)],
        "on_rounds_tokens_per_s": [round(x, 1) for x in tps["on"]],
        "off_rounds_tokens_per_s": [round(x, 1) for x in tps["off"]],
        "gateway_cpu_ms_per_request_on": round(
            statistics.median(cpu["on"]) / args.requests * 1000, 2
        ),
        "gateway_cpu_ms_per_request_off": round(
            statistics.median(cpu["off"]) / args.requests * 1000, 2
        ),
        "scrapes_of_gateway_on": int(scrapes),
        "errors": errors,
    }
    shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
