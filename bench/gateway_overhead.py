"""Gateway overhead: the same streaming load straight to vLLM and through the gateway, one run.

Rounds alternate direct / gateway (order flipped each round) so that drift on a shared machine
hits both alike; the result is the ratio of median throughputs, the mean of per-round ratios
with its 95 % interval, and the difference of median times to first token.
At 32 streams, time to first token is mostly queueing in the engine, so the gateway's own
addition is also measured one request at a time, in direct/gateway pairs.

    .venv/bin/python bench/gateway_overhead.py [--rounds 4] [--concurrency 32] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loadgen import one_request, paired_ratio, run_round  # noqa: E402
from tests.server.gateway import REPO, engine_headers, start_gateway  # noqa: E402


async def paired_ttft(
    gateway_url: str, engine_url: str, model: str, pairs: int, headers: dict[str, str]
) -> dict:
    """What the gateway adds to time to first token, without queueing in the way: one request
    at a time, direct and through the gateway in alternating order, paired differences."""
    import httpx

    differences = []
    async with httpx.AsyncClient(timeout=120, headers=headers) as client:
        for i in range(pairs):
            order = (engine_url, gateway_url) if i % 2 == 0 else (gateway_url, engine_url)
            got = {}
            for url in order:
                got[url] = await one_request(client, url, model, 1, i)
            differences.append(got[gateway_url].ttft_s - got[engine_url].ttft_s)
    differences.sort()
    low, high = median_interval(differences)
    return {
        "ttft_pairs": pairs,
        "added_ttft_ms_median_1_stream": round(statistics.median(differences) * 1000, 2),
        "added_ttft_ms_median_ci95": [round(low * 1000, 2), round(high * 1000, 2)],
        "added_ttft_ms_p25_p75": [
            round(differences[len(differences) // 4] * 1000, 2),
            round(differences[3 * len(differences) // 4] * 1000, 2),
        ],
    }


def median_interval(values: list[float]) -> tuple[float, float]:
    """95 % distribution-free interval of the median: order statistics picked by the binomial."""
    from scipy import stats

    ordered = sorted(values)
    n = len(ordered)
    lo = max(int(stats.binom.ppf(0.025, n, 0.5)) - 1, 0)
    hi = min(int(stats.binom.ppf(0.975, n, 0.5)), n - 1)
    return ordered[lo], ordered[hi]


async def measure(
    gateway_url: str, engine_url: str, model: str, args, headers: dict[str, str]
) -> dict:
    """`headers`: the engine's key; the gateway (no API keys here) ignores it."""
    await run_round("warmup", engine_url, model, args.concurrency, args.concurrency, 16, headers)
    rounds = {"direct": [], "gateway": []}
    for i in range(args.rounds):
        order = ("direct", "gateway") if i % 2 == 0 else ("gateway", "direct")
        for label in order:
            url = engine_url if label == "direct" else gateway_url
            r = await run_round(
                label, url, model, args.concurrency, args.requests, args.max_tokens, headers
            )
            rounds[label].append(r)
            print(
                f"round {i} {label:8s} {r.tokens_per_s:7.1f} tok/s  median TTFT "
                f"{r.median_ttft_s * 1000:7.1f} ms  errors {r.errors}",
                flush=True,
            )
    paired = await paired_ttft(gateway_url, engine_url, model, args.ttft_pairs, headers)
    if not args.rounds:
        return paired
    direct_tps = statistics.median(r.tokens_per_s for r in rounds["direct"])
    gateway_tps = statistics.median(r.tokens_per_s for r in rounds["gateway"])
    ratio, ratio_low, ratio_high = paired_ratio(
        [r.tokens_per_s for r in rounds["gateway"]], [r.tokens_per_s for r in rounds["direct"]]
    )
    ttft = {k: statistics.median(x.ttft_s for r in v for x in r.results) for k, v in rounds.items()}
    return {
        "concurrency": args.concurrency,
        "requests_per_round": args.requests,
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
        "direct_tokens_per_s": round(direct_tps, 1),
        "gateway_tokens_per_s": round(gateway_tps, 1),
        "throughput_ratio": round(gateway_tps / direct_tps, 4),
        "paired_ratio_mean_ci95": [round(x, 4) for x in (ratio, ratio_low, ratio_high)],
        "per_round_tokens_per_s": {
            label: [round(r.tokens_per_s, 1) for r in v] for label, v in rounds.items()
        },
        "direct_median_ttft_ms": round(ttft["direct"] * 1000, 2),
        "gateway_median_ttft_ms": round(ttft["gateway"] * 1000, 2),
        "added_median_ttft_ms": round((ttft["gateway"] - ttft["direct"]) * 1000, 2),
        "errors": sum(r.errors for v in rounds.values() for r in v),
        **paired,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--ttft-pairs", type=int, default=60)
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/gateway_overhead.json")
    args = parser.parse_args()
    home = Path(os.environ.get("LEANSERVE_HOME", REPO / ".leanserve"))
    log = Path(tempfile.mkdtemp()) / "gateway.log"
    gateway = start_gateway(home, log)
    try:
        gateway.wait_ready()
        engine = gateway.engine()
        model = next(iter(gateway.ready_info()["engines"]))
        result = asyncio.run(
            measure(gateway.url, engine["url"], model, args, engine_headers(engine))
        )
    finally:
        gateway.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
