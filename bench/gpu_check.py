"""GPU check (make gpu-check): read NVML through the gateway's own metrics code and print the
/metrics lines it produces.

It opens NVML with server.metrics.gpu.Nvml.open(), registers server.metrics.resources'
ResourceCollector in a fresh prometheus_client registry, scrapes it twice `--interval` seconds
apart (energy per variant needs an interval to share) and prints the second exposition. GPU
memory per engine process shows for the process groups given with --engine VARIANT=PID (a
running vLLM engine's pid, e.g. from the gateway's /ready); without them the attributed energy
all goes to variant="idle". On a machine without an NVIDIA GPU it prints
"no NVIDIA GPU: GPU series absent" and the series it does export, and exits 0.

    .venv/bin/python bench/gpu_check.py [--interval 2] [--engine NAME=PID ...] [--burn 0]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from prometheus_client import CollectorRegistry, generate_latest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server.metrics.gpu import Nvml  # noqa: E402
from server.metrics.registry import Metrics  # noqa: E402
from server.metrics.resources import ResourceCollector  # noqa: E402


def why_no_gpu() -> str:
    try:
        import pynvml
    except ImportError as exc:
        return f"pynvml (nvidia-ml-py) is not installed: {exc}"
    try:
        pynvml.nvmlInit()
        return f"NVML reports {pynvml.nvmlDeviceGetCount()} devices"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def burn(seconds: float) -> int:
    """Keep GPU 0 busy with bf16 matmuls for `seconds` (needs torch with CUDA); returns how many
    were run, so the energy counter moves between the two scrapes."""
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    n, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        a = (a @ a).clamp_(-1, 1)
        n += 1
        if n % 16 == 0:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    return n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between scrapes")
    parser.add_argument("--engine", action="append", default=[], metavar="VARIANT=PID")
    parser.add_argument(
        "--burn", type=float, default=0.0, help="seconds of GPU load between the scrapes"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    nvml = Nvml.open()
    if nvml is None:
        print(f"no NVIDIA GPU: GPU series absent ({why_no_gpu()})")
    else:
        for r in nvml.read():
            print(f"# GPU {r.index}: {r.name}")
    backends = {}
    for item in args.engine:
        variant, _, pid = item.partition("=")
        backends[variant] = SimpleNamespace(engine=SimpleNamespace(pid=int(pid)))
    metrics = Metrics()
    registry = CollectorRegistry()
    registry.register(ResourceCollector(SimpleNamespace(backends=backends), metrics, nvml))

    generate_latest(registry)  # the first scrape: the energy accountant's starting point
    started = time.monotonic()
    if args.burn > 0 and nvml is not None:
        print(f"# {burn(args.burn)} bf16 8192x8192 matmuls on GPU 0 in {args.burn} s")
    time.sleep(max(0.0, args.interval - (time.monotonic() - started)))
    text = generate_latest(registry).decode()
    print(text, end="")
    gpu_lines = [line for line in text.splitlines() if line.startswith("leanserve_gpu_")]
    if nvml is None:
        assert not gpu_lines, "GPU series without a GPU"
    else:
        print(f"# {len(gpu_lines)} leanserve_gpu_* samples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
