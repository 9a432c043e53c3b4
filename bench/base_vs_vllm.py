"""The base through leanserve against plain vLLM with its own defaults, on the same machine.

Arms, both running during the whole measurement (only one is driven at a time):
- leanserve: `leanserve serve` as `make serve` starts it, with no variants (`--variants` to
  declare some, e.g. two idle ones): its placement plan, compiled engine, through the gateway.
- vllm: `python -m vllm.entrypoints.openai.api_server --model <the same checkpoint>` with its
  defaults (its own thread binding, compiled), the same KV budget (VLLM_CPU_KVCACHE_SPACE).
Start-up to ready is measured first, cold (an empty compile cache) and warm (restarted on the
cache the cold start filled), for both. Then rounds alternate the arms, the order flipped each
round, at 32 streams and at 1 stream (128 tokens, ignore_eos); per streams: each arm's median
tokens/s, the ratio of medians, and the mean of per-round ratios with its 95 % interval.

    .venv/bin/python bench/base_vs_vllm.py [--rounds 6] [--variants w8a8 w4a16]
        [--build-args '["--calibration-samples", "8"]'] [--no-build-speed]
        [--out bench/results/base_vs_vllm.json]

Starts engines: run it alone (flock /tmp/leanserve-engine.lock ...). The variants, when
declared, are built first if the store lacks them: the script waits for them before it
measures (the start-up figures of such a run then include builds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loadgen import paired_ratio, run_round  # noqa: E402
from tests.server.gateway import REPO, free_port, start_gateway  # noqa: E402

MAX_TOKENS = 128
STREAMS = {32: 64, 1: 8}  # streams -> requests per round


def base_checkpoint(home: Path) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "server.basemodel", "--home", str(home)],
        cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])["source"]


class PlainVllm:
    """vLLM's API server with its defaults: only the model, its name, host and port."""

    def __init__(self, model_dir: str, name: str, cache: Path, log: Path, kv_gib: float):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
            "--served-model-name", name, "--host", "127.0.0.1", "--port", str(self.port),
        ]  # fmt: skip
        self.env = {
            "VLLM_CPU_KVCACHE_SPACE": f"{kv_gib:g}",
            "VLLM_CACHE_ROOT": str(cache),
            "HF_HUB_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
        }
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self) -> float:
        """Starts it; returns seconds until /health answers 200."""
        started = time.monotonic()
        env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_CPU_OMP")}
        self.proc = subprocess.Popen(
            self.command, env={**env, **self.env}, stdout=self.log.open("a"),
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        while time.monotonic() - started < 900:
            if self.proc.poll() is not None:
                raise RuntimeError(f"plain vLLM exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError("plain vLLM not healthy in 900 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def wait_variants(url: str, timeout_s: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        data = httpx.get(f"{url}/v1/variants", timeout=10).json()["data"]
        if all(v["state"] in ("ready", "failed", "no_room") for v in data):
            return {v["id"]: v["state"] for v in data}
        time.sleep(5)
    raise TimeoutError(f"variants not ready in {timeout_s} s")


def gateway_start(home: Path, log: Path, env: dict) -> tuple[object, float]:
    started = time.monotonic()
    gw = start_gateway(home, log, extra_env=env)
    gw.wait_ready(900)
    return gw, time.monotonic() - started


def binding(log_text: str) -> dict:
    """vLLM's own account of its OpenMP binding (the last start in the log)."""
    cores = re.findall(r"local_rank=0, core ids=\[([0-9, ]*)\]", log_text)
    reserved = re.findall(r"reserved_cpus=\[([0-9, ]*)\]", log_text)
    return {
        "core_ids": cores[-1] if cores else None,
        "reserved": reserved[-1] if reserved else None,
    }


def summary(tps: dict[str, list[float]], ttft: dict[str, list[float]]) -> dict:
    mean, low, high = paired_ratio(tps["leanserve"], tps["vllm"])
    med = {k: statistics.median(v) for k, v in tps.items()}
    return {
        "tokens_per_s": tps,
        "median_tokens_per_s": {k: round(v, 1) for k, v in med.items()},
        "ratio_of_medians": round(med["leanserve"] / med["vllm"], 4),
        "paired_mean_ratio": round(mean, 4),
        "paired_95ci": None if len(tps["vllm"]) < 2 else [round(low, 4), round(high, 4)],
        "median_ttft_ms": {k: round(statistics.median(v) * 1000, 1) for k, v in ttft.items()},
    }


async def measure(urls: dict[str, str], model: str, rounds: int, streams: list[int]) -> dict:
    for url in urls.values():  # warm both: first requests pay one-off costs
        await run_round("warmup", url, model, 8, 8, 16)
    out = {}
    for n in streams:
        tps: dict[str, list[float]] = {"leanserve": [], "vllm": []}
        ttft: dict[str, list[float]] = {"leanserve": [], "vllm": []}
        for r in range(rounds):
            order = ["leanserve", "vllm"] if r % 2 == 0 else ["vllm", "leanserve"]
            for arm in order:
                rnd = await run_round(arm, urls[arm], model, n, STREAMS[n], MAX_TOKENS)
                if rnd.errors:
                    raise RuntimeError(f"{arm}: {rnd.errors} failed requests at {n} streams")
                tps[arm].append(round(rnd.tokens_per_s, 1))
                ttft[arm].append(rnd.median_ttft_s)
            print(f"{n} streams, round {r + 1}: leanserve {tps['leanserve'][-1]} tok/s, "
                  f"vllm {tps['vllm'][-1]} tok/s", flush=True)  # fmt: skip
        out[f"streams_{n}"] = summary(tps, ttft)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--streams", type=int, nargs="+", default=[32, 1], choices=list(STREAMS))
    parser.add_argument("--variants", nargs="*", default=[], help="declared in leanserve's arm")
    parser.add_argument(
        "--build-args", default="[]", help="JSON list for LEANSERVE_BUILD_ARGS (declared variants)"
    )
    parser.add_argument("--no-build-speed", action="store_true", help="builds skip vLLM speed")
    parser.add_argument("--kv-cache-gib", type=float, default=1.0, help="both arms")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/base_vs_vllm.json")
    args = parser.parse_args()
    home = Path(os.environ.get("LEANSERVE_HOME", REPO / ".leanserve"))
    work = Path(tempfile.mkdtemp(prefix="base-vs-vllm-"))
    model_dir = base_checkpoint(home)
    env = {
        "LEANSERVE_VARIANTS": json.dumps(args.variants),
        "LEANSERVE_ENGINE__ENFORCE_EAGER": "false",  # leanserve's default (the tests' is eager)
        "LEANSERVE_ENGINE__KV_CACHE_GIB": f"{args.kv_cache_gib:g}",
        "VLLM_CACHE_ROOT": str(work / "leanserve-cache"),  # cold: an empty compile cache
        "LEANSERVE_BUILD_ARGS": args.build_args,
    }
    if args.no_build_speed:
        env["LEANSERVE_BUILD_SPEED"] = "false"
    result: dict = {
        "rounds": args.rounds, "max_tokens": MAX_TOKENS, "variants": args.variants,
        "kv_cache_gib": args.kv_cache_gib, "cpus": sorted(os.sched_getaffinity(0)),
    }  # fmt: skip
    gw, cold = gateway_start(home, work / "gateway-cold.log", env)
    model = next(iter(gw.ready_info()["engines"]))
    gw.stop()
    vllm = PlainVllm(model_dir, model, work / "vllm-cache", work / "vllm.log", args.kv_cache_gib)
    vllm_cold = vllm.start()
    vllm.stop()
    vllm_warm = vllm.start()
    gw, warm = gateway_start(home, work / "gateway.log", env)
    if args.variants:  # idle variants means built and ready, not building beside the base
        result["variants_ready"] = wait_variants(gw.url, 5400)
        print("variants:", result["variants_ready"], flush=True)
    result["startup_to_ready_s"] = {
        "leanserve": {"cold": round(cold, 1), "warm": round(warm, 1)},
        "vllm": {"cold": round(vllm_cold, 1), "warm": round(vllm_warm, 1)},
    }
    print("start-up to ready:", result["startup_to_ready_s"], flush=True)
    try:
        engine = gw.ready_info()["engines"][model]
        engine_log = (home / "logs" / f"engine-{model}.log").read_text(errors="replace")
        result["leanserve"] = {
            "command": "leanserve serve (make serve)", "env": env,
            "placement": engine.get("placement"), "binding": binding(engine_log),
        }  # fmt: skip
        result["vllm"] = {
            "command": " ".join(vllm.command), "env": vllm.env,
            "binding": binding(vllm.log.read_text(errors="replace")),
        }  # fmt: skip
        urls = {"leanserve": gw.url, "vllm": vllm.url}
        result.update(asyncio.run(measure(urls, model, args.rounds, args.streams)))
    finally:
        gw.stop()
        vllm.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k.startswith(("streams", "startup"))},
                     indent=2))  # fmt: skip
    print(f"logs in {work}; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
