"""GPU check (make gpu-check): one prepared script for a machine with an NVIDIA GPU.

1. plan: the placement plan for this machine's GPUs (the default settings), and the same
   declared variants for an 8B-size base (`--base-gib`, default 15), as `leanserve plan` prints.
2. engines: one engine-shaped process per engine of that plan, started with the plan's
   environment (CUDA_DEVICE_ORDER, CUDA_VISIBLE_DEVICES) in the compress environment's Python,
   holding `--engine-mib` on each of its GPUs; NVML's per-process memory per device then shows
   each on its assigned GPU (checked, and printed per device).
3. compress: distill + evaluate on CUDA for a random-initialised model of the default
   architecture (SmolLM2-135M's Llama shape, 30 layers; a student with a quarter of them
   dropped), in the compress environment: the device each step used, steps, tokens/s, KL and
   top-1 agreement, peak GPU memory.
4. metrics: the gateway's NVML series (ResourceCollector), two scrapes `--interval` apart.

    .venv/bin/python bench/gpu_check.py [--json OUT] [--interval 2] [--burn 0]
    .venv/bin/python bench/gpu_check.py --dry-run   # no GPU: a fake 80 GiB GPU's plan, the
                                                    # compress part on the CPU (4 layers)

Exits 1 when a check fails (an engine on the wrong GPU, a step not on CUDA).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
GIB = 2**30

# What an engine-shaped process does: hold memory on every GPU it sees, say so, wait.
ENGINE_SHAPED = """
import sys, time, torch
held = [torch.empty(int(sys.argv[1]) * 2**20, dtype=torch.uint8, device=f"cuda:{i}")
        for i in range(torch.cuda.device_count())]
torch.cuda.synchronize()
print("holding", len(held), flush=True)
time.sleep(float(sys.argv[2]))
"""


def compress_python() -> str:
    return os.environ.get("LEANSERVE_COMPRESS_PYTHON", str(REPO / ".venv-compress/bin/python"))


# -- 1. plan ---------------------------------------------------------------------------------------
def plans(dry_run: bool, base_gib: float) -> tuple[list, dict]:
    """(the plans to show, as (title, Plan)), and the plan the engine check uses."""
    import dataclasses

    from server.placement import Machine, detect, model_needs, plan, size_ratio, table
    from server.settings import load_settings

    settings = load_settings()
    here = detect(with_gpus=True)
    machine = here if here.gpus or not dry_run else Machine.simple([len(here.cpus)], [80 * GIB])
    needs = model_needs(settings)
    big = int(base_gib * GIB)
    big_needs = [dataclasses.replace(needs[0], weight_bytes=big)] + [
        dataclasses.replace(n, weight_bytes=int(big * size_ratio(n.recipe or "")), estimated=True)
        for n in needs[1:]
    ]
    out = []
    title = "this machine" if machine is here else "a fake 80 GiB GPU (dry run)"
    for label, ns in ((f"{title}, the default model", needs),
                      (f"{title}, a {base_gib:g} GiB base", big_needs)):  # fmt: skip
        try:
            p = plan(machine, ns, settings)
            out.append((label, p))
            print(f"## plan: {label}\n{table(p)}\n", flush=True)
        except Exception as exc:  # a refusal is a result too
            print(f"## plan: {label}\nrefused: {exc}\n", flush=True)
    return out, (out[0][1] if out else None)


# -- 2. engine-shaped processes on their GPUs ----------------------------------------------------
def engines_on_gpus(current, mib: int, nvml) -> dict:
    """Start one process per planned engine with its environment; NVML must show each pid
    on the planned GPUs. Returns per engine: planned GPUs, where NVML saw it, ok."""
    procs = {}
    for name, placement in current.engines.items():
        env = {**os.environ, **placement.env}
        procs[name] = (
            placement,
            subprocess.Popen(
                [compress_python(), "-c", ENGINE_SHAPED, str(mib), "60"],
                env=env, stdout=subprocess.PIPE, text=True,
            ),
        )  # fmt: skip
    result = {}
    try:
        for name, (_, proc) in procs.items():
            line = proc.stdout.readline().strip()
            if not line.startswith("holding"):
                result[name] = {"error": f"engine-shaped process did not start: {line!r}"}
        time.sleep(1.0)
        readings = nvml.read()
        for r in readings:
            used = {pid: round(b / 2**20) for pid, b in r.process_memory_bytes.items()}
            total = f"{r.memory_used_bytes / GIB:.1f} of {r.memory_total_bytes / GIB:.1f} GiB"
            print(f"# GPU {r.index} ({r.name}): {total} used; processes (pid: MiB) {used}")
        for name, (placement, proc) in procs.items():
            seen = sorted(r.index for r in readings if proc.pid in r.process_memory_bytes)
            entry = result.setdefault(name, {})
            entry.update(planned=list(placement.gpus), nvml=seen, pid=proc.pid)
            entry["ok"] = seen == sorted(placement.gpus)
            print(f"# engine {name}: planned GPUs {list(placement.gpus)}, NVML sees pid "
                  f"{proc.pid} on {seen}: {'ok' if entry['ok'] else 'MISMATCH'}")  # fmt: skip
    finally:
        for _, proc in procs.values():
            proc.kill()
            proc.wait()
    return result


# -- 3. distill + evaluate (runs in the compress environment) ------------------------------------
def compress_part(dry_run: bool, seconds: float) -> dict:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from compress import checkpoint, distill, evaluate, prune
    from compress.context import BuildContext
    from compress.device import pick_device
    from compress.progress import Progress
    from compress.recipes import DistillStep
    from compress.texts import CALIBRATION_TEXT, HELDOUT_TEXT, read_text

    device = pick_device()
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=4096, special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    bpe.train_from_iterator(CALIBRATION_TEXT.read_text()[:400_000].split("\n\n"), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )
    layers = 4 if dry_run else 30
    # SmolLM2-135M's shape (docs/toolchain.md), with this tokenizer's vocabulary.
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=576, intermediate_size=1536,
        num_hidden_layers=layers, num_attention_heads=9, num_key_value_heads=3,
        max_position_embeddings=2048, tie_word_embeddings=True, rope_theta=100000.0,
        bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    base = work / "base"
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(base)
    tokenizer.save_pretrained(base)
    student = prune.drop_layers(
        checkpoint.load_model(base), list(range(layers - layers // 4, layers))
    )
    ctx = BuildContext(base, CALIBRATION_TEXT, Progress(bars=False), device=device)
    ctx.progress.stage("distill")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step = DistillStep(max_seconds=seconds, max_tokens=10**9, seq_len=256, lr=1e-3)
    started = time.monotonic()
    distill.apply(step, student, tokenizer, ctx)
    notes = ctx.notes["distill"]
    teacher = checkpoint.load_model(base)
    t = time.monotonic()
    quality = evaluate.evaluate(
        student, teacher, tokenizer, read_text(HELDOUT_TEXT), seq_len=256, max_windows=16,
        max_passages=20, device=device, split="validation",
    )  # fmt: skip
    out = {
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
        "layers": layers,
        "student_layers": layers - layers // 4,
        "distill": {**notes, "tokens_per_s": round(notes["tokens"] / max(notes["seconds"], 1e-9))},
        "distill_wall_s": round(t - started, 1),
        "evaluate_s": round(time.monotonic() - t, 1),
        "evaluate": {k: round(v, 4) if isinstance(v, float) else v
                     for k, v in quality.as_dict().items()},  # fmt: skip
        "evaluated_on": str(next(student.parameters()).device),
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / GIB, 2)
        if device == "cuda" else None,
    }  # fmt: skip
    return out


def run_compress_part(dry_run: bool, seconds: float) -> dict:
    cmd = [compress_python(), __file__, "--compress-part", "--seconds", str(seconds)]
    out = subprocess.run(
        cmd + (["--dry-run"] if dry_run else []), cwd=REPO, capture_output=True, text=True
    )
    if out.returncode != 0:
        return {"error": out.stderr[-3000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- 4. metrics ------------------------------------------------------------------------------------
def metrics(nvml, interval: float, burn_s: float) -> list[str]:
    from prometheus_client import CollectorRegistry, generate_latest

    from server.metrics.registry import Metrics
    from server.metrics.resources import ResourceCollector

    registry = CollectorRegistry()
    registry.register(ResourceCollector(SimpleNamespace(backends={}), Metrics(), nvml))
    generate_latest(registry)  # the first scrape: the energy accountant's starting point
    started = time.monotonic()
    if burn_s > 0 and nvml is not None:
        print(f"# {burn(burn_s)} bf16 8192x8192 matmuls on GPU 0 in {burn_s} s")
    time.sleep(max(0.0, interval - (time.monotonic() - started)))
    text = generate_latest(registry).decode()
    print(text, end="")
    return [line for line in text.splitlines() if line.startswith("leanserve_gpu_")]


def burn(seconds: float) -> int:
    """Keep GPU 0 busy with bf16 matmuls (torch with CUDA) so the energy counter moves."""
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    n, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        a = (a @ a).clamp_(-1, 1)
        n += 1
    torch.cuda.synchronize()
    return n


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="no GPU needed (see above)")
    parser.add_argument("--compress-part", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=None, help="distillation budget")
    parser.add_argument("--base-gib", type=float, default=15.0)
    parser.add_argument("--engine-mib", type=int, default=1024)
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between scrapes")
    parser.add_argument("--burn", type=float, default=0.0, help="seconds of GPU load")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    seconds = args.seconds or (5.0 if args.dry_run else 60.0)
    if args.compress_part:
        print(json.dumps(compress_part(args.dry_run, seconds)))
        return 0

    from server.metrics.gpu import Nvml

    nvml = Nvml.open()
    if nvml is None:
        print(f"no NVIDIA GPU: GPU series absent ({why_no_gpu()})")
        if not args.dry_run:
            print("(run with --dry-run for the parts that need no GPU)")
    results: dict = {"gpus": [] if nvml is None else [r.name for r in nvml.read()]}
    shown, current = plans(args.dry_run, args.base_gib)
    results["plans"] = {label: p.as_dict() for label, p in shown}
    ok = True
    if nvml is not None and current is not None and current.device == "cuda":
        results["engines"] = engines_on_gpus(current, args.engine_mib, nvml)
        ok &= all(e.get("ok") for e in results["engines"].values())
    compress = run_compress_part(args.dry_run, seconds)
    print("## compress:", json.dumps(compress, indent=2), flush=True)
    results["compress"] = compress
    expected = "cpu" if args.dry_run and nvml is None else "cuda"
    ok &= compress.get("device") == expected == compress.get("distill", {}).get("device")
    gpu_lines = metrics(nvml, args.interval, args.burn)
    results["gpu_series"] = len(gpu_lines)
    assert nvml is not None or not gpu_lines, "GPU series without a GPU"
    results["ok"] = bool(ok)
    print(f"# gpu check: {'ok' if ok else 'FAILED'}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
