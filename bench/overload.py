"""Overload: open-loop load at ~3x the base engine's capacity for 60 s, base-only against the
slo policy with variants, in one run.

1. Measure the base engine's capacity (closed loop, 32 concurrent streams) through a
   base-only gateway.
2. Base-only: Poisson arrivals at 3x that rate for 60 s.
3. Base-only with shedding: the same gateway settings as slo (policy slo, load shedding, the
   same SLO) but no variants; the same arrivals. What shedding alone does.
4. slo: a gateway serving the base and its variants (built first if missing), default policy
   slo with load shedding; the same arrivals. Against 3: what the variants add.
Engines run where the placement plan puts them (`leanserve plan`); `--engine-cpus` and
`--engine-nice` override it as before.
Reported per phase: p50/p95 time to first token of served requests, error rate (shed requests
count as errors), share served by each variant, mean quality (card top-1 agreement) of what
was served.

    .venv/bin/python bench/overload.py [--seconds 60] [--factor 3] [--variants w8a8 ...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loadgen import PROMPTS, cores_besides, run_round  # noqa: E402
from tests.server.gateway import REPO, start_gateway  # noqa: E402

MAX_TOKENS = 32


async def open_loop(url: str, model: str, rate: float, seconds: float, slo_ttft: float) -> dict:
    rng = random.Random(0)
    results: list[dict] = []
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=200)
    async with httpx.AsyncClient(timeout=180, limits=limits) as client:

        async def one(i: int) -> None:
            body = {
                "model": model,
                "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                "max_tokens": MAX_TOKENS,
                "ignore_eos": True,
                "stream": True,
            }
            started = time.perf_counter()
            at = started - t0
            ttft, status, variant, answered = None, 0, None, None
            try:
                async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
                    status, variant = r.status_code, r.headers.get("x-leanserve-variant")
                    answered = time.perf_counter() - started
                    async for line in r.aiter_lines():
                        if line.startswith("data: {") and ttft is None:
                            ttft = time.perf_counter() - started
            except httpx.HTTPError:
                status = -1
            row = {"status": status, "ttft_s": ttft, "variant": variant, "at": at}
            results.append({**row, "answered_s": answered})

        async def watch_engines() -> None:
            """Each engine's learned concurrency limit and requests in flight, every second."""
            while True:
                await asyncio.sleep(1.0)
                with contextlib.suppress(httpx.HTTPError):
                    engines = (await client.get(f"{url}/ready", timeout=5)).json()["engines"]
                    engine_log.append(
                        {
                            "t": round(time.perf_counter() - t0, 1),
                            **{
                                n: [e.get("concurrency_limit"), e["in_flight"]]
                                for n, e in engines.items()
                            },
                        }
                    )

        # Arrival times are fixed in advance (Poisson), and every arrival that is due is sent
        # at once: a busy event loop sends late, not fewer, so both phases offer the same load.
        tasks = []
        engine_log: list[dict] = []
        t0 = time.perf_counter()
        watcher = asyncio.create_task(watch_engines())
        due = 0.0
        i = 0
        while due < seconds:
            await asyncio.sleep(max(0.0, due - (time.perf_counter() - t0)))
            tasks.append(asyncio.create_task(one(i)))
            i += 1
            due += rng.expovariate(rate)
        await asyncio.wait(tasks, timeout=180)
        watcher.cancel()
    ok = [r for r in results if r["status"] == 200 and r["ttft_s"] is not None]
    within = sum(r["ttft_s"] <= slo_ttft for r in ok) / max(len(ok), 1)
    shed_times = sorted(r["answered_s"] for r in results if r["status"] == 429)
    ttfts = sorted(r["ttft_s"] for r in ok)
    shares: dict[str, int] = {}
    for r in ok:
        shares[r["variant"]] = shares.get(r["variant"], 0) + 1
    p95 = _quantile(ttfts, 0.95)
    return {
        "sent": len(results),
        "served": len(ok),
        "error_rate": round(1 - len(ok) / max(len(results), 1), 4),
        "shed_429": sum(r["status"] == 429 for r in results),
        "ttft_p50_s": round(statistics.median(ttfts), 3) if ttfts else None,
        "ttft_p95_s": p95,
        "p95_over_slo": round(p95 / slo_ttft, 2) if p95 is not None else None,
        "client_within_slo": round(within, 4),
        # A 429 costs the engines nothing: its round trip is the client's and the gateway's
        # own delay, which every served request's time to first token also contains.
        "shed_round_trip_p50_s": _quantile(shed_times, 0.5),
        "shed_round_trip_p95_s": _quantile(shed_times, 0.95),
        "share": {k: round(v / len(ok), 3) for k, v in sorted(shares.items())},
        "by_10s": by_window(results, 10.0),
        "engines_each_s": engine_log,
    }


def _quantile(ordered: list[float], q: float) -> float | None:
    return round(ordered[int(q * (len(ordered) - 1))], 3) if ordered else None


def cpu_seconds(gateway_pid: int) -> dict[str, float]:
    """CPU time used so far by this client, the gateway process and its engines (children)."""
    import psutil

    gateway = psutil.Process(gateway_pid)
    engines = 0.0
    for child in gateway.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            t = child.cpu_times()
            engines += t.user + t.system
    g, c = gateway.cpu_times(), psutil.Process().cpu_times()
    return {"client": c.user + c.system, "gateway": g.user + g.system, "engines": engines}


# Run in its own process: GET /health five times a second, then print the latency quantiles.
# What the gateway answers at once still takes this long: its share of any request's delay.
PROBE = """
import json, sys, time, httpx
url, seconds, lat = sys.argv[1], float(sys.argv[2]), []
end = time.monotonic() + seconds
with httpx.Client(timeout=60) as client:
    while time.monotonic() < end:
        t = time.perf_counter()
        try:
            client.get(url + "/health")
            lat.append(time.perf_counter() - t)
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
lat.sort()
q = lambda f: round(lat[int(f * (len(lat) - 1))], 4) if lat else None
print(json.dumps({"n": len(lat), "p50_s": q(0.5), "p95_s": q(0.95), "max_s": q(1.0)}))
"""


def measured(gw, phase, seconds: float) -> dict:
    """Run `phase` (a coroutine); add the CPU each part used during it (in cores) and the
    gateway's /health latency seen from another process meanwhile."""
    probe = subprocess.Popen(
        [sys.executable, "-c", PROBE, gw.url, str(seconds)], stdout=subprocess.PIPE, text=True
    )
    before, t = cpu_seconds(gw.proc.pid), time.perf_counter()
    out = asyncio.run(phase)
    after, wall = cpu_seconds(gw.proc.pid), time.perf_counter() - t
    out["cpu_cores_used"] = {k: round((after[k] - before[k]) / wall, 2) for k in before}
    out["gateway_health_latency"] = json.loads(probe.communicate(timeout=120)[0] or "null")
    return out


def by_window(results: list[dict], width_s: float) -> list[dict]:
    """Sent, served and p95 time to first token by when the requests were sent."""
    out = []
    for start in range(0, int(max((r["at"] for r in results), default=0)) + 1, int(width_s)):
        rs = [r for r in results if start <= r["at"] < start + width_s]
        ttfts = sorted(r["ttft_s"] for r in rs if r["status"] == 200 and r["ttft_s"] is not None)
        out.append(
            {"from_s": start, "sent": len(rs), "served": len(ttfts),
             "ttft_p95_s": _quantile(ttfts, 0.95)}
        )  # fmt: skip
    return out


def mean_quality(url: str, share: dict[str, float], base: str) -> float:
    models = httpx.get(f"{url}/v1/models", timeout=10).json()["data"]
    quality = {m["id"]: m.get("quality", 1.0) for m in models}
    quality[base] = 1.0
    return round(sum(quality.get(v, 0.0) * s for v, s in share.items()), 4)


def _share_within(metrics_text: str, family: str, bound_s: float) -> dict[str, float]:
    """Per `model_name`/`variant` label: the share of a TTFT histogram's samples <= bound_s
    (a bucket bound must equal it)."""
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[str, list[float]] = {}
    for fam in text_string_to_metric_families(metrics_text):
        if fam.name != family:
            continue
        for sample in fam.samples:
            label = sample.labels.get("variant") or sample.labels.get("model_name") or "?"
            entry = counts.setdefault(label, [0.0, 0.0])
            if sample.name.endswith("_bucket") and float(sample.labels["le"]) == bound_s:
                entry[0] = sample.value
            elif sample.name.endswith("_count"):
                entry[1] = sample.value
    return {k: round(v[0] / v[1], 4) for k, v in counts.items() if v[1]}


def within_slo_by_layer(url: str, slo_s: float) -> dict:
    """Where time to first token is spent: the share of requests within the SLO as the engine
    (vLLM's own histogram) and as the gateway (send to first event) measured it. The client's
    share is in the results; a gap between layers is queueing between them, not in vLLM."""
    engines = httpx.get(f"{url}/ready", timeout=10).json()["engines"]
    out = {"gateway": _share_within(
        httpx.get(f"{url}/metrics", timeout=10).text, "leanserve_time_to_first_token_seconds", slo_s
    )}  # fmt: skip
    for name, engine in engines.items():
        text = httpx.get(f"{engine['url']}/metrics", timeout=10).text
        out[f"engine {name}"] = _share_within(text, "vllm:time_to_first_token_seconds", slo_s)
    return out


def wait_variants(url: str, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        data = httpx.get(f"{url}/v1/variants", timeout=10).json()["data"]
        if all(v["state"] in ("ready", "failed") for v in data):
            return {v["id"]: v["state"] for v in data}
        time.sleep(2)
    raise TimeoutError("variants not ready")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--factor", type=float, default=3.0)
    parser.add_argument("--slo-ttft", type=float, default=1.0)
    parser.add_argument("--variants", nargs="+", default=["w8a8", "prune-0.25+distill"])
    parser.add_argument(
        "--build-args",
        default="[]",
        help="JSON list for LEANSERVE_BUILD_ARGS (budgets pick the variant)",
    )
    parser.add_argument(
        "--engine-nice", type=int, default=None, help="engines' nice value (default: the plan's)"
    )
    parser.add_argument(
        "--engine-cpus",
        type=int,
        nargs="+",
        help="cores for the engines (engine.cpus); this client and the gateway keep the others, "
        "as they would on hosts of their own",
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/overload.json")
    args = parser.parse_args()
    home = Path(os.environ.get("LEANSERVE_HOME", REPO / ".leanserve"))
    tmp = Path(tempfile.mkdtemp())
    result: dict = {
        "seconds": args.seconds,
        "factor": args.factor,
        "slo_ttft_s": args.slo_ttft,
        "variants_requested": args.variants,
        "build_args": json.loads(args.build_args),
    }

    # Both phases: the engines run at a lower CPU priority than the gateway and this client,
    # as they would on their own hosts; on one 2-core machine, at equal priority, the client's
    # and the gateway's own scheduling delays dominated the time to first token it measured.
    common = {} if args.engine_nice is None else {"LEANSERVE_ENGINE__NICE": str(args.engine_nice)}
    result["engine_nice"] = args.engine_nice
    if args.engine_cpus:
        others = cores_besides(args.engine_cpus)
        os.sched_setaffinity(0, others)  # the gateway and the probe inherit it
        common["LEANSERVE_ENGINE__CPUS"] = json.dumps(args.engine_cpus)
        result["cores"] = {"engines": args.engine_cpus, "client_and_gateway": others}
    gw = start_gateway(home, tmp / "base.log", extra_env={"LEANSERVE_VARIANTS": "[]", **common})
    try:
        gw.wait_ready()
        model = next(iter(gw.ready_info()["engines"]))
        cap = asyncio.run(run_round("capacity", gw.url, model, 32, 128, MAX_TOKENS))
        capacity = len(cap.results) / cap.wall_s
        result["base_capacity_rps"] = round(capacity, 2)
        rate = args.factor * capacity
        result["offered_rps"] = round(rate, 2)
        print(f"capacity {capacity:.2f} req/s; offering {rate:.2f} req/s", flush=True)
        result["base_only"] = measured(
            gw, open_loop(gw.url, model, rate, args.seconds, args.slo_ttft), args.seconds
        )
        print("base-only", result["base_only"], flush=True)
        result["placement"] = {n: e.get("placement") for n, e in gw.ready_info()["engines"].items()}
    finally:
        gw.stop()

    shedding = {
        "LEANSERVE_ROUTING__DEFAULT_POLICY": "slo",
        "LEANSERVE_ROUTING__SHED_LOAD": "true",
        "LEANSERVE_ROUTING__SLO__TTFT_S": str(args.slo_ttft),
    }
    gw = start_gateway(
        home, tmp / "base-shed.log", extra_env={**common, **shedding, "LEANSERVE_VARIANTS": "[]"}
    )
    try:
        gw.wait_ready()
        result["base_only_shed"] = measured(
            gw, open_loop(gw.url, model, rate, args.seconds, args.slo_ttft), args.seconds
        )
        print("base-only with shedding", result["base_only_shed"], flush=True)
    finally:
        gw.stop()

    env = {
        **common,
        **shedding,
        "LEANSERVE_VARIANTS": json.dumps(args.variants),
        "LEANSERVE_BUILD_ARGS": args.build_args,
    }
    gw = start_gateway(home, tmp / "slo.log", extra_env=env)
    try:
        gw.wait_ready()
        result["variants"] = wait_variants(gw.url, 3600)
        slo = measured(
            gw, open_loop(gw.url, model, rate, args.seconds, args.slo_ttft), args.seconds
        )
        slo["mean_quality"] = mean_quality(gw.url, slo["share"], model)
        slo["within_slo_by_layer"] = within_slo_by_layer(gw.url, args.slo_ttft)
        result["slo"] = slo
        result["slo_placement"] = {
            n: e.get("placement") for n, e in gw.ready_info()["engines"].items()
        }
        print("slo", slo, flush=True)
    finally:
        gw.stop()
    result["base_only"]["mean_quality"] = 1.0
    result["base_only_shed"]["mean_quality"] = 1.0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
