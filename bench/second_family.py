"""Gemma 3 270M, a second model family, through every named recipe with small budgets.

Prepares the base as the gateway does (`server.basemodel gemma3-270m`, in the serving
environment: its transformers converts the GGUF's tokenizer right, docs/toolchain.md), then
runs `python -m compress build` for each recipe, one at a time, and records what happened:
built (its whole card: quality, size, timings), refused before any work (the message), or
failed.
With --serve-check each built variant is also started on vLLM CPU for one greedy completion
(that starts engines: run it under the engine lock).

    flock /tmp/leanserve-engine.lock nice -n 19 .venv-compress/bin/python bench/second_family.py \
        --home /tmp/gemma-home --store /tmp/gemma-store [--only w8a8,w4a16] [--serve-check]

Writes bench/results/gemma3_270m_cards.json (merged with what is there: --only reruns some).
Small budgets: the numbers show what works and roughly what it costs, not tuned quality.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RECIPES = (
    "prune-0.25",
    "prune-0.25-angular",
    "w8a8",
    "fp8",
    "prune-0.25+distill",
    "distill",
    "w4a16",
    "wanda-0.5",
    "sparse-2:4",
    "prune-0.25+distill+w8a8",
)
BUDGET = [
    "--calibration-samples", "8", "--eval-windows", "4", "--eval-passages", "10",
    "--distill-seconds", "30", "--chat-prompts", "8", "--chat-max-tokens", "32",
]  # fmt: skip
PROMPT = "The capital of France is"


def prepare_base(python: str, home: Path) -> Path:
    cmd = [python, "-m", "server.basemodel", "gemma3-270m", "--home", str(home)]
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"preparing the base failed: {out.stderr.strip().splitlines()[-1:]}")
    return Path(json.loads(out.stdout.strip().splitlines()[-1])["source"])


def build(base: Path, store: Path, recipe: str) -> dict:
    cmd = [
        sys.executable, "-m", "compress", "build", "--base", str(base), "--recipe", recipe,
        "--store", str(store), "--progress-json", "--no-bars", *BUDGET,
    ]  # fmt: skip
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    start = time.monotonic()
    out = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True, check=False)
    events = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    result = {
        "command": " ".join(["python", *cmd[1:]]),
        "seconds": round(time.monotonic() - start, 1),
        "exit_code": out.returncode,
    }
    last = events[-1] if events else {"event": "error", "message": "no output"}
    if last["event"] == "done":  # the whole card, as card.json in the store holds it
        return {**result, "status": "built", "path": last["path"], "card": last["card"]}
    started = any(e["event"] in ("start", "stage") for e in events)
    status = "failed" if started else "refused"
    return {**result, "status": status, "message": last.get("message")}


def serve_check(path: Path, python: str, logs: Path) -> dict:
    """Start vLLM CPU on the variant's folder and ask for one greedy completion."""
    from compress import speed

    logs.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    try:
        with speed.running_engine(path, python, logs / f"{path.name}.log") as engine:
            text = speed.complete(engine, PROMPT, max_tokens=12)
    except Exception as exc:  # the error is the finding: record it, go on with the next
        return {"served": False, "error": f"{type(exc).__name__}: {exc}"[:2000]}
    return {
        "served": True,
        "prompt": PROMPT,
        "completion": text,
        "seconds": time.monotonic() - start,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path("/tmp/gemma-home"))
    parser.add_argument("--store", type=Path, default=Path("/tmp/gemma-store"))
    parser.add_argument("--only", default=",".join(RECIPES))
    parser.add_argument("--serve-check", action="store_true", help="start vLLM on each variant")
    parser.add_argument("--vllm-python", default=str(REPO / ".venv" / "bin" / "python"))
    parser.add_argument(
        "--out", type=Path, default=REPO / "bench" / "results" / "gemma3_270m_cards.json"
    )
    args = parser.parse_args()

    base = prepare_base(args.vllm_python, args.home)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results["base"] = {"model": "gemma3-270m", "checkpoint": str(base), "budget": BUDGET}
    if args.serve_check:
        results["base"]["serve_check"] = serve_check(base, args.vllm_python, args.store / "logs")
    recipes = results.setdefault("recipes", {})
    for recipe in args.only.split(","):
        result = build(base, args.store, recipe)
        if args.serve_check and result["status"] == "built":
            result["serve_check"] = serve_check(
                Path(result["path"]), args.vllm_python, args.store / "logs"
            )
        recipes[recipe] = result
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
