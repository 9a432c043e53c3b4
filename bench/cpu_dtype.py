"""vLLM CPU in the checkpoint's bf16 against --dtype float32, same run: what `engine.dtype: auto`
chooses on a CPU without bf16 instructions (AVX2-only x86) and why.

Two plain vLLM servers on the same checkpoint (`--enforce-eager` unless --compiled, the same KV
budget), both up, driven in turn, order flipped each round: 32 streams x 64 tokens
(`ignore_eos`). Per arm the median tokens/s, the ratio of medians and the paired mean ratio
with its 95 % interval; and the CPU's flags that decide (bench/results/cpu_dtype.json).

    flock /tmp/leanserve-engine.lock .venv/bin/python bench/cpu_dtype.py [--rounds 4]
        [--model <checkpoint dir>] [--compiled]

On an AVX-512-BF16 CPU expect a ratio near or below 1 (bf16 is native there, and `auto` keeps
it); the default rule only changes anything where detect_cpu_bf16() is False.
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

from bench.base_vs_vllm import PlainVllm, base_checkpoint  # noqa: E402
from bench.loadgen import paired_ratio, run_round  # noqa: E402
from compress.vllm_command import detect_cpu_avx512, detect_cpu_bf16  # noqa: E402
from tests.server.gateway import REPO  # noqa: E402

STREAMS, REQUESTS, MAX_TOKENS = 32, 32, 64


async def rounds(urls: dict[str, str], n: int) -> dict[str, list[float]]:
    for url in urls.values():
        await run_round("warmup", url, "m", 4, 4, 16)
    tps: dict[str, list[float]] = {arm: [] for arm in urls}
    for r in range(n):
        for arm in list(urls) if r % 2 == 0 else list(urls)[::-1]:
            rnd = await run_round(arm, urls[arm], "m", STREAMS, REQUESTS, MAX_TOKENS)
            if rnd.errors:
                raise RuntimeError(f"{arm}: {rnd.errors} failed requests")
            tps[arm].append(round(rnd.tokens_per_s, 1))
        print(f"round {r + 1}: " + ", ".join(f"{a} {v[-1]} tok/s" for a, v in tps.items()))
    return tps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--model", help="checkpoint dir (default: the prepared default model)")
    parser.add_argument("--compiled", action="store_true", help="torch.compile, as served")
    parser.add_argument("--kv-cache-gib", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/cpu_dtype.json")
    args = parser.parse_args()
    home = Path(os.environ.get("LEANSERVE_HOME", REPO / ".leanserve"))
    model = args.model or base_checkpoint(home)
    work = Path(tempfile.mkdtemp(prefix="cpu-dtype-"))
    servers = {}
    for dtype in ("bfloat16", "float32"):
        s = PlainVllm(model, "m", work / f"cache-{dtype}", work / f"{dtype}.log", args.kv_cache_gib)
        s.command += ["--dtype", dtype] + ([] if args.compiled else ["--enforce-eager"])
        servers[dtype] = s
    try:
        started = {dtype: round(s.start(), 1) for dtype, s in servers.items()}
        tps = asyncio.run(rounds({d: s.url for d, s in servers.items()}, args.rounds))
    finally:
        for s in servers.values():
            s.stop()
    mean, low, high = paired_ratio(tps["float32"], tps["bfloat16"])
    medians = {d: statistics.median(v) for d, v in tps.items()}
    result = {
        "model": model,
        "cpu": {"bf16": detect_cpu_bf16(), "avx512": detect_cpu_avx512()},
        "compiled": args.compiled,
        "streams": STREAMS, "requests": REQUESTS, "max_tokens": MAX_TOKENS,
        "start_s": started,
        "tokens_per_s": tps,
        "median_tokens_per_s": medians,
        "ratio_of_medians_float32_vs_bf16": round(medians["float32"] / medians["bfloat16"], 3),
        "paired_ratio_float32_vs_bf16": [round(mean, 3), round(low, 3), round(high, 3)],
    }  # fmt: skip
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "tokens_per_s"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
