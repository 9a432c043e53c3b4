"""Full-budget builds of the issue's target variants on the default model, with speed.

Runs `python -m compress build ... --speed` for each target (one at a time: each build
starts vLLM for the base, then the variant), then prints a Markdown table against the
targets and writes every card to --out.

    .venv-compress/bin/python bench/compress_targets.py \
        --base /tmp/lshome/models/smollm2-135m-instruct --store /tmp/lsbench/store \
        [--only w8a8,w4a16] [--eval-windows 16 --eval-passages 50]

The hybrid target (prune 25 % + distill + w8a8) quantizes the stored prune+distill variant
(`--base <that variant> --reference <base>`), which is the same chain as the recipe
`prune-0.25+distill+w8a8` without paying for the 30-minute distillation twice.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# label -> (recipe, extra args, targets: ppl change max, speedup_32 min, size ratio max)
TARGETS = {
    "w8a8": ("w8a8", [], (0.02, 1.15, 0.65)),
    "w4a16": ("w4a16", [], (0.08, None, 0.50)),
    "prune-0.25+distill": ("prune-0.25+distill", [], (0.25, 1.25, None)),
    "prune-0.25+distill+w8a8": ("w8a8", ["hybrid"], (0.30, 1.40, None)),
}


def build(base: Path, store: Path, recipe: str, extra: list[str], eval_args: list[str]) -> dict:
    cmd = [
        sys.executable, "-m", "compress", "build", "--base", str(base), "--recipe", recipe,
        "--store", str(store), "--speed", "--progress-json", "--no-bars", *eval_args, *extra,
    ]  # fmt: skip
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    out = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    last = json.loads(out.stdout.strip().splitlines()[-1])
    if last["event"] != "done":
        raise SystemExit(f"build failed: {last}")
    return last


def verdict(value: float | None, limit: float | None, higher_is_better: bool = False) -> str:
    if limit is None or value is None:
        return "report"
    ok = value >= limit if higher_is_better else value <= limit
    return "met" if ok else "MISSED"


def row(label: str, card: dict, targets: tuple) -> str:
    ppl_max, speed_min, size_max = targets
    q, size, speed = card["quality"], card["size"], card["speed"]
    ppl = q["perplexity_change"]
    s32 = speed.get("speedup_32")
    return (
        f"| {label} | {card['variant']} | {q['perplexity']:.2f} vs {q['base_perplexity']:.2f} "
        f"({ppl * 100:+.1f} %, target <= +{ppl_max * 100:.0f} %: {verdict(ppl, ppl_max)}) "
        f"| {q['kl_to_base']:.4f} | {q['top1_agreement']:.3f} "
        f"| {q['last_word_accuracy']:.2f} vs {q['base_last_word_accuracy']:.2f} "
        f"| {'-' if s32 is None else f'{s32:.2f}x'} ({verdict(s32, speed_min, True)}"
        f"{'' if speed_min is None else f', target >= {speed_min}x'}) "
        f"| {size['size_ratio'] * 100:.0f} % ({verdict(size['size_ratio'], size_max)}) |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--only", default=",".join(TARGETS))
    parser.add_argument("--eval-windows", default="16")
    parser.add_argument("--eval-passages", default="50")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "compress.json")
    args = parser.parse_args()
    eval_args = ["--eval-windows", args.eval_windows, "--eval-passages", args.eval_passages]

    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for label in args.only.split(","):
        recipe, extra, _ = TARGETS[label]
        if extra == ["hybrid"]:
            healed = build(args.base, args.store, "prune-0.25+distill", [], eval_args)
            extra = ["--reference", str(args.base)]
            done = build(Path(healed["path"]), args.store, recipe, extra, eval_args)
        else:
            done = build(args.base, args.store, recipe, extra, eval_args)
        results[label] = done["card"]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")

    print(
        "| target | variant | perplexity | KL to base | top-1 agree | last word "
        "| speed 32 streams | size |\n|---|---|---|---|---|---|---|---|"
    )
    for label, card in results.items():
        if label in TARGETS:  # other keys hold extra runs (e.g. bench/compress_speed.py)
            print(row(label, card, TARGETS[label][2]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
