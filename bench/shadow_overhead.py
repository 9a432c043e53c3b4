"""Shadow scoring on against off: what reading answers back (quality.shadow_rate 1.0) costs the
clients' time to first token, same run.

Two vLLM engines (`leanserve engine`: the base and a small w8a8) and two gateway processes in
front of both by URL: gateway "on" scores every answer of the base under the base and w8a8
after it is sent (shadow_rate 1.0), gateway "off" scores nothing (shadow_rate 0). Rounds of
closed-loop streaming load, pinned to the base (`<base>:base`), alternate between the two, the
order flipping each round, so engines, machine drift and prompts are the same for both. Before
each round the "on" gateway's scoring left over from its last round is let finish, so an "off"
round does not pay for it. Scoring waits for spare capacity (at most
quality.shadow_max_in_flight, 1, client requests in flight on the engine it reads on), so at
concurrency 1-2 it runs between requests and competes with the next one: the case to measure.

Reported: per round the p95 (and median) time to first token of each arm; the medians over
rounds; the mean of the paired per-round ratios on/off of the p95 with its 95 % t-interval;
and how many answers the "on" gateway scored and dropped (by reason).

    .venv/bin/python bench/shadow_overhead.py [--rounds 8] [--concurrency 2] [--requests 24]
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
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.base_vs_vllm import base_checkpoint  # noqa: E402
from bench.loadgen import Round, cores_besides, paired_ratio, run_round  # noqa: E402
from tests.server.gateway import REPO, start_engine, start_gateway, wait_health  # noqa: E402
from tests.server.test_variants_e2e import SMALL_BUILD  # noqa: E402

BASE = "smollm2-135m-instruct"
W8A8 = f"{BASE}:w8a8"


def p95(values: list[float]) -> float:
    """The 95th percentile (linear interpolation between order statistics)."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=20, method="inclusive")[18]


def ttfts(r: Round) -> list[float]:
    return [x.ttft_s for x in r.results if x.status == 200]


def shadow_counts(url: str) -> dict[str, float]:
    """The gateway's scored and dropped counts, from its /metrics."""
    counts: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("leanserve_live_quality_samples_total{"):
            counts["scored"] = counts.get("scored", 0.0) + float(line.split()[-1])
        elif line.startswith("leanserve_live_quality_dropped_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            counts[f"dropped_{reason}"] = float(line.split()[-1])
    return counts


def settle(url: str, timeout_s: float, quiet_s: float = 2.0) -> None:
    """Wait until the gateway's scoring counts have not moved for `quiet_s`."""
    deadline = time.monotonic() + timeout_s
    last, since = shadow_counts(url), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = shadow_counts(url)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return


def ensure_w8a8(home: Path) -> None:
    """A small w8a8 in the store (compress finds it there when built before)."""
    base = base_checkpoint(home)
    subprocess.run(
        [str(REPO / ".venv-compress/bin/python"), "-m", "compress", "build", "--base", base,
         "--recipe", "w8a8", "--store", str(home / "variants"), "--no-bars", *SMALL_BUILD],
        check=True, cwd=REPO, stdout=subprocess.DEVNULL,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--settle-s", type=float, default=120.0)
    parser.add_argument(
        "--shadow-max-in-flight",
        type=int,
        default=1,
        help="quality.shadow_max_in_flight of the 'on' gateway (1, the default; 0: score only "
        "on an idle engine)",
    )
    parser.add_argument(
        "--engine-cpus",
        type=int,
        nargs="+",
        help="cores for the two engines (the first the base's, the second w8a8's); the "
        "gateways and this client keep the others",
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/shadow_overhead.json")
    args = parser.parse_args()
    others = cores_besides(args.engine_cpus or [])
    home = Path(os.environ.get("LEANSERVE_HOME", REPO / ".leanserve"))
    ensure_w8a8(home)
    work = Path(tempfile.mkdtemp(prefix="shadow_overhead-"))
    engines, urls = [], {}
    for i, (name, recipe) in enumerate(((BASE, None), (W8A8, "w8a8"))):
        env = {}
        if args.engine_cpus:  # one core each where given two, else all of them for both
            cores = args.engine_cpus[i : i + 1] if len(args.engine_cpus) > 1 else args.engine_cpus
            env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cores))
            os.sched_setaffinity(0, cores)
        proc, urls[name] = start_engine(home, work / f"engine-{i}.log", recipe, env)
        engines.append(proc)
    os.sched_setaffinity(0, others)
    gateways = {}
    try:
        for proc, url in zip(engines, urls.values(), strict=True):
            wait_health(url, proc, timeout_s=900)
        for label, rate in (("on", 1.0), ("off", 0.0)):
            config = {
                "variants": [],
                "remote_engines": urls,
                "experiment_store": f"sqlite:///{work / f'{label}.db'}",
                "quality": {
                    "shadow_rate": rate,
                    "shadow_max_in_flight": args.shadow_max_in_flight,
                },
            }
            (work / f"{label}.yaml").write_text(yaml.safe_dump(config))
            gateways[label] = start_gateway(
                home, work / f"gateway-{label}.log", args=["--config", str(work / f"{label}.yaml")]
            )
        for gw in gateways.values():
            gw.wait_ready()
        model = f"{BASE}:base"
        for gw in gateways.values():  # warm both paths (connections, the engines' first runs)
            asyncio.run(run_round("warmup", gw.url, model, args.concurrency, args.concurrency, 8))
        settle(gateways["on"].url, args.settle_s)
        before = shadow_counts(gateways["on"].url)
        rounds: dict[str, list[Round]] = {"on": [], "off": []}
        for i in range(args.rounds):
            for label in ("on", "off") if i % 2 == 0 else ("off", "on"):
                settle(gateways["on"].url, args.settle_s)
                r = asyncio.run(
                    run_round(
                        label, gateways[label].url, model, args.concurrency, args.requests,
                        args.max_tokens,
                    )
                )  # fmt: skip
                rounds[label].append(r)
                print(
                    f"round {i} shadow {label:3s} p95 TTFT {p95(ttfts(r)) * 1000:7.1f} ms  "
                    f"median {statistics.median(ttfts(r)) * 1000:7.1f} ms  errors {r.errors}",
                    flush=True,
                )
        settle(gateways["on"].url, args.settle_s)
        after = shadow_counts(gateways["on"].url)
    finally:
        for gw in gateways.values():
            gw.stop()
        for proc in engines:
            proc.terminate()
            proc.wait(60)
    p95s = {k: [p95(ttfts(r)) for r in v] for k, v in rounds.items()}
    medians = {k: [statistics.median(ttfts(r)) for r in v] for k, v in rounds.items()}
    mean, low, high = paired_ratio(p95s["on"], p95s["off"])
    result = {
        "rounds": args.rounds,
        "concurrency": args.concurrency,
        "requests_per_round": args.requests,
        "max_tokens": args.max_tokens,
        "engine_cpus": args.engine_cpus,
        "shadow_max_in_flight": args.shadow_max_in_flight,
        "p95_ttft_ms_median_on": round(statistics.median(p95s["on"]) * 1000, 1),
        "p95_ttft_ms_median_off": round(statistics.median(p95s["off"]) * 1000, 1),
        "p95_ttft_paired_ratio_on_over_off": round(mean, 4),
        "p95_ttft_paired_ratio_95ci": [round(low, 4), round(high, 4)],
        "median_ttft_ms_median_on": round(statistics.median(medians["on"]) * 1000, 1),
        "median_ttft_ms_median_off": round(statistics.median(medians["off"]) * 1000, 1),
        "per_round_p95_ttft_ms": {k: [round(x * 1000, 1) for x in v] for k, v in p95s.items()},
        "shadow_on": {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after},
        "client_requests_on": args.rounds * args.requests,
        "errors": sum(r.errors for v in rounds.values() for r in v),
    }
    shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
