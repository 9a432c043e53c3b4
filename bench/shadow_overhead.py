"""Shadow scoring on against off: what reading answers back (quality.shadow_rate 1.0) costs the
clients' time to first token, same run.

Two gateways as `make serve` runs them, each with its own engines (the base and a small w8a8
declared as a variant, placed by the gateway's plan: on a 2-core machine both compute on core 1,
the variant at a lower priority): gateway "on" scores every answer of the base under the base
and w8a8 after it is sent (shadow_rate 1.0), gateway "off" scores nothing (shadow_rate 0).
Rounds of streaming load pinned to the base (`<base>:base`) alternate between the two, the
order flipping each round, so machine drift and prompts are the same for both. Clients pause
between answers (`--think-s`, exponential, as people between chat turns), so the engines have
idle gaps: scoring waits for one (quality.shadow_max_in_flight, by default 0 client requests in
flight on the engine and on every engine sharing its cores), and a request that arrives while a
read-back runs pays for it: the case to measure. Before each round the "on" gateway's leftover
scoring is let finish (its engines share core 1 with the "off" gateway's, and would look idle to
it during an "off" round); how many answers it scored during its own rounds is reported.

Reported: per round the p95 (and median) time to first token of each arm; the medians over
rounds; the mean of the paired per-round ratios on/off of the p95 with its 95 % t-interval;
how many answers the "on" gateway scored and dropped (by reason).

    .venv/bin/python bench/shadow_overhead.py [--rounds 8] [--concurrency 2] [--requests 48]
        [--think-s 1.0] [--out bench/results/shadow_overhead.json]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.base_vs_vllm import base_checkpoint, wait_variants  # noqa: E402
from bench.loadgen import Round, paired_ratio, run_round  # noqa: E402
from tests.server.gateway import REPO, start_gateway  # noqa: E402
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


SETTLE_S = 120.0


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


def own_home(home: Path, path: Path) -> Path:
    """A home for one gateway: its own logs, caches and state, the shared home's base model
    and variant store (read only here: the variant is built before)."""
    path.mkdir(parents=True)
    for shared in ("models", "variants"):
        (path / shared).symlink_to(home / shared)
    return path


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
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--think-s", type=float, default=1.0, help="mean pause between answers")
    parser.add_argument(
        "--shadow-max-in-flight",
        type=int,
        default=0,
        help="quality.shadow_max_in_flight of the 'on' gateway (0, the default: idle only)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/shadow_overhead.json")
    args = parser.parse_args()
    home = Path(os.environ.get("LEANSERVE_HOME", REPO / ".leanserve"))
    ensure_w8a8(home)
    work = Path(tempfile.mkdtemp(prefix="shadow_overhead-"))
    gateways = {}
    try:
        for label, rate in (("on", 1.0), ("off", 0.0)):
            env = {
                "LEANSERVE_VARIANTS": json.dumps(["w8a8"]),
                "LEANSERVE_BUILD_ARGS": json.dumps(SMALL_BUILD),  # finds the one built above
                "LEANSERVE_QUALITY__SHADOW_RATE": str(rate),
                "LEANSERVE_QUALITY__SHADOW_MAX_IN_FLIGHT": str(args.shadow_max_in_flight),
            }
            gw_home = own_home(home, work / f"home-{label}")
            gateways[label] = start_gateway(gw_home, work / f"gateway-{label}.log", env)
        for gw in gateways.values():
            gw.wait_ready(900)
            states = wait_variants(gw.url, 900)
            if states.get("w8a8") != "ready":
                raise RuntimeError(f"w8a8 is not ready: {states}; see {gw.log_path}")
        model = f"{BASE}:base"
        for gw in gateways.values():  # warm both paths (connections, the engines' first runs)
            asyncio.run(run_round("warmup", gw.url, model, args.concurrency, args.concurrency, 8))
        placement = gateways["on"].ready_info()["engines"].get(W8A8, {}).get("placement")
        settle(gateways["on"].url, SETTLE_S)
        before = shadow_counts(gateways["on"].url)
        in_rounds = 0.0  # answers the "on" gateway scored while its own round ran
        rounds: dict[str, list[Round]] = {"on": [], "off": []}
        for i in range(args.rounds):
            for label in ("on", "off") if i % 2 == 0 else ("off", "on"):
                # The "on" gateway's leftover read-backs would run on the shared core during
                # an "off" round (its engines look idle to it): let them finish first.
                settle(gateways["on"].url, SETTLE_S)
                start = shadow_counts(gateways["on"].url).get("scored", 0.0)
                r = asyncio.run(
                    run_round(
                        label, gateways[label].url, model, args.concurrency, args.requests,
                        args.max_tokens, think_s=args.think_s,
                    )
                )  # fmt: skip
                if label == "on":
                    in_rounds += shadow_counts(gateways["on"].url).get("scored", 0.0) - start
                rounds[label].append(r)
                print(
                    f"round {i} shadow {label:3s} p95 TTFT {p95(ttfts(r)) * 1000:7.1f} ms  "
                    f"median {statistics.median(ttfts(r)) * 1000:7.1f} ms  errors {r.errors}",
                    flush=True,
                )
        settle(gateways["on"].url, SETTLE_S)
        after = shadow_counts(gateways["on"].url)
    finally:
        for gw in gateways.values():
            gw.stop()
    p95s = {k: [p95(ttfts(r)) for r in v] for k, v in rounds.items()}
    medians = {k: [statistics.median(ttfts(r)) for r in v] for k, v in rounds.items()}
    mean, low, high = paired_ratio(p95s["on"], p95s["off"])
    result = {
        "rounds": args.rounds,
        "concurrency": args.concurrency,
        "requests_per_round": args.requests,
        "max_tokens": args.max_tokens,
        "think_s": args.think_s,
        "shadow_max_in_flight": args.shadow_max_in_flight,
        "w8a8_placement": placement,
        "p95_ttft_ms_median_on": round(statistics.median(p95s["on"]) * 1000, 1),
        "p95_ttft_ms_median_off": round(statistics.median(p95s["off"]) * 1000, 1),
        "p95_ttft_paired_ratio_on_over_off": round(mean, 4),
        "p95_ttft_paired_ratio_95ci": [round(low, 4), round(high, 4)],
        "median_ttft_ms_median_on": round(statistics.median(medians["on"]) * 1000, 1),
        "median_ttft_ms_median_off": round(statistics.median(medians["off"]) * 1000, 1),
        "per_round_p95_ttft_ms": {k: [round(x * 1000, 1) for x in v] for k, v in p95s.items()},
        "shadow_on": {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after},
        "scored_during_on_rounds": in_rounds,
        "client_requests_on": args.rounds * args.requests,
        "errors": sum(r.errors for v in rounds.values() for r in v),
    }
    shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
