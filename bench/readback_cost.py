"""What one shadow-scoring read-back costs an engine: a 100-token prompt sent as token ids with
`max_tokens: 1`, with and without `prompt_logprobs` (k = 1, 5, 20), on the base's engine
(`leanserve engine`, as the tests start it: eager). Sequential, one request at a time, the
settings interleaved over rounds; the median time of each.

    .venv/bin/python bench/readback_cost.py [--rounds 6] [--out bench/results/readback_cost.json]

Starts an engine: run it alone (flock /tmp/leanserve-engine.lock ...).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.server.gateway import REPO, start_engine, wait_health  # noqa: E402

SETTINGS = (None, 1, 5, 20)  # prompt_logprobs; None: a plain prefill


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--prompt-tokens", type=int, default=100)
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/readback_cost.json")
    args = parser.parse_args()
    home = Path(os.environ.get("LEANSERVE_HOME", REPO / ".leanserve"))
    proc, url = start_engine(home, Path("/tmp/readback-cost-engine.log"))
    times: dict[str, list[float]] = {str(k): [] for k in SETTINGS}
    sizes: dict[str, int] = {}
    try:
        wait_health(url, proc, 900)
        name = httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"]
        ids = list(range(1000, 1000 + args.prompt_tokens))
        for _ in range(args.rounds):
            for k in SETTINGS:
                body: dict = {"model": name, "prompt": ids, "max_tokens": 1}
                if k is not None:
                    body["prompt_logprobs"] = k
                started = time.perf_counter()
                r = httpx.post(f"{url}/v1/completions", json=body, timeout=120)
                times[str(k)].append(time.perf_counter() - started)
                r.raise_for_status()
                sizes[str(k)] = len(r.content)
    finally:
        proc.terminate()
        proc.wait(60)
    result = {
        "rounds": args.rounds,
        "prompt_tokens": args.prompt_tokens,
        "median_ms": {k: round(statistics.median(v) * 1000, 1) for k, v in times.items()},
        "response_bytes": sizes,
        "times_s": {k: [round(x, 4) for x in v] for k, v in times.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("median_ms", "response_bytes")}, indent=2))


if __name__ == "__main__":
    main()
