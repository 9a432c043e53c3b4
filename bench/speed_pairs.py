"""Variant against base throughput in vLLM CPU, as paired rounds: a ratio that noise cannot fake.

`compress build --speed` measures the base and then the variant once each (one round of 32
streams), so a few percent of machine noise moves the card's speed-up. Here both engines run
at once (only one is driven at a time) and rounds alternate base and variant, the order flipped
each round; the per-round ratios give a mean with a 95 % interval, next to the ratio of the
medians.

    .venv-compress/bin/python bench/speed_pairs.py BASE_DIR VARIANT_DIR [--rounds 8]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loadgen import paired_ratio  # noqa: E402
from compress import speed  # noqa: E402

STREAMS, MAX_TOKENS = 32, 128


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("base", type=Path)
    parser.add_argument("variant", type=Path)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    python = speed.default_vllm_python()
    if not python:
        print("no vLLM environment: set LEANSERVE_VLLM_PYTHON", file=sys.stderr)
        return 2
    logs = Path(tempfile.mkdtemp(prefix="speed-pairs-"))
    tps: dict[str, list[float]] = {"base": [], "variant": []}
    with contextlib.ExitStack() as stack:
        engines = {
            name: stack.enter_context(speed.running_engine(path, python, logs / name, name))
            for name, path in (("base", args.base), ("variant", args.variant))
        }
        for r in range(args.rounds):
            order = ["base", "variant"] if r % 2 == 0 else ["variant", "base"]
            for name in order:
                result = speed.benchmark(engines[name], MAX_TOKENS, (STREAMS,))
                tps[name].append(result[f"streams_{STREAMS}"]["tokens_per_s"])
            print(f"round {r + 1}: base {tps['base'][-1]} variant {tps['variant'][-1]}", flush=True)
    mean, low, high = paired_ratio(tps["variant"], tps["base"])
    out = {
        "base": str(args.base),
        "variant": str(args.variant),
        "streams": STREAMS,
        "max_tokens": MAX_TOKENS,
        "tokens_per_s": tps,
        "median_base": statistics.median(tps["base"]),
        "median_variant": statistics.median(tps["variant"]),
        "ratio_of_medians": round(
            statistics.median(tps["variant"]) / statistics.median(tps["base"]), 4
        ),
        "paired_mean_ratio": round(mean, 4),
        "paired_95ci": [round(low, 4), round(high, 4)],
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
