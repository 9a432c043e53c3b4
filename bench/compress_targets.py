"""Full-budget builds of the named target recipes on the default model: the figures of
BENCHMARKS.md "Compression", measured on the test split with intervals and chat agreement.

Runs `python -m compress build ... --speed` for each target, one at a time (each build starts
vLLM for the base, then the variant), every card measured on the whole test split: 29 windows
of 512 tokens, 50 last-word passages, the 146 test chat prompts (the builds' defaults). Prints
a Markdown table against the targets, saying by how much a missed one is missed, and writes
every card to --out.

    .venv-compress/bin/python bench/compress_targets.py \
        --base .leanserve/models/smollm2-135m-instruct --store /tmp/lsbench/store \
        [--only w8a8,w4a16] [--no-speed]

The hybrid target (prune 25 % + distill + w8a8) quantizes the stored prune+distill variant
(`--base <that variant> --reference <base>`), the same chain as the recipe
`prune-0.25+distill+w8a8` without paying for the 30-minute distillation twice.
`prune-0.25+distill-kl` is the ablation beside the named recipe: the same 30 minutes with the
KL term alone (no hard-label term), to tell learning the base from learning the text.

Budget curve (issue 15): prune 25 % + distill at several distillation budgets, chat agreement
and KL against minutes, and where a log-linear fit of chat top-1 would reach the router's
quality floor:

    .venv-compress/bin/python bench/compress_targets.py --base ... --store ... \
        --distill-minutes 30 60 120 [--out bench/results/distill_budget.json]

Hours of CPU on a 2-core machine: a bench, not CI.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from compress.report import with_interval

REPO = Path(__file__).resolve().parent.parent
RECIPES = Path(__file__).resolve().parent / "compress_recipes"
DEFAULT_OUT = REPO / "bench" / "results" / "compress_test_split.json"
CURVE_OUT = REPO / "bench" / "results" / "distill_budget.json"
QUALITY_FLOOR = 0.9  # the router's default routing.quality_floor, on chat top-1


@dataclass(frozen=True)
class Target:
    recipe: str
    ppl_max: float | None  # perplexity change, as a fraction
    speed_min: float | None  # throughput at 32 streams against the base
    size_max: float | None  # bytes against the base
    hybrid: bool = False


TARGETS = {
    "w8a8": Target("w8a8", 0.02, 1.15, 0.65),
    "w4a16": Target("w4a16", 0.08, None, 0.50),
    "prune-0.25+distill": Target("prune-0.25+distill", 0.25, 1.25, None),
    "prune-0.25+distill-kl": Target(str(RECIPES / "prune-0.25-distill-kl.yaml"), 0.25, 1.25, None),
    "prune-0.25+distill+w8a8": Target("w8a8", 0.30, 1.40, None, hybrid=True),
}


def build(base: Path, store: Path, recipe: str, extra: list[str]) -> dict:
    cmd = [
        sys.executable, "-m", "compress", "build", "--base", str(base), "--recipe", recipe,
        "--store", str(store), "--progress-json", *extra,
    ]  # fmt: skip
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    # stderr stays on the terminal: compress's progress bars show how far a long build is.
    out = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    last = json.loads(out.stdout.strip().splitlines()[-1])
    if last["event"] != "done":
        raise SystemExit(f"build failed: {last}")
    return last


def verdict(value: float | None, limit: float | None, higher_is_better: bool = False) -> str:
    """ "met", or "MISSED by ..." in the figure's own unit, or "report" without a target."""
    if limit is None or value is None:
        return "report"
    ok = value >= limit if higher_is_better else value <= limit
    if ok:
        return "met"
    return f"MISSED by {abs(value - limit) * 100:.1f} points"


def _ci(q: dict, key: str, fmt: str = ".3f", scale: float = 1, unit: str = "") -> str:
    """A card figure with its 95 % interval, as `compress report` prints it."""
    return with_interval(q[key], q.get("ci95", {}).get(key), fmt, scale, unit)


def row(label: str, card: dict, t: Target) -> str:
    q, size, speed = card["quality"], card["size"], card["speed"]
    chat = q.get("chat") or {}
    ppl, s32 = q["perplexity_change"], speed.get("speedup_32")
    chat_cell = (
        f"{_ci(chat, 'top1_agreement')} / {chat['kl_to_base']:.3f}"
        if chat.get("top1_agreement") is not None
        else "-"
    )
    return (
        f"| {label} | {_ci(q, 'perplexity_change', '+.1f', 100, ' %')} "
        f"(<= +{t.ppl_max * 100:.0f} %: {verdict(ppl, t.ppl_max)}) "
        f"| {_ci(q, 'kl_to_base', '.4f')} | {_ci(q, 'top1_agreement')} | {chat_cell} "
        f"| {'-' if s32 is None else f'{s32:.2f}x'} ({verdict(s32, t.speed_min, True)}) "
        f"| {size['size_ratio'] * 100:.0f} % ({verdict(size['size_ratio'], t.size_max)}) |"
    )


def targets(args: argparse.Namespace, speed: list[str]) -> int:
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for label in args.only.split(","):
        t = TARGETS[label]
        if t.hybrid:
            healed = build(args.base, args.store, "prune-0.25+distill", speed)
            extra = [*speed, "--reference", str(args.base)]
            done = build(Path(healed["path"]), args.store, t.recipe, extra)
        else:
            done = build(args.base, args.store, t.recipe, speed)
        results[label] = done["card"]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")

    print(
        "| target | perplexity change [95 %] | KL to base | text top-1 | chat top-1 [95 %] / KL "
        "| speed 32 streams | size |\n|---|---|---|---|---|---|---|"
    )
    for label, card in results.items():
        if label in TARGETS:
            print(row(label, card, TARGETS[label]))
    return 0


def floor_budget(points: list[tuple[float, float]], floor: float) -> float | None:
    """Minutes at which a least-squares line of chat top-1 against log(minutes) reaches the
    floor; None when the fit does not rise. An extrapolation, and labelled as one."""
    xs = [math.log(m) for m, _ in points]
    ys = [y for _, y in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if len(points) < 2 or sxx == 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    if slope <= 1e-6:  # flat within rounding: no budget reaches the floor
        return None
    try:
        return math.exp(mx + (floor - my) / slope)
    except OverflowError:  # a rise so slow no budget reaches it
        return None


def curve(args: argparse.Namespace, speed: list[str]) -> int:
    out = CURVE_OUT if args.out == DEFAULT_OUT else args.out
    results = json.loads(out.read_text()) if out.exists() else {}
    for minutes in args.distill_minutes:
        extra = [*speed, "--distill-seconds", str(minutes * 60)]
        done = build(args.base, args.store, "prune-0.25+distill", extra)
        card = done["card"]
        results[f"{minutes:g}"] = {
            "minutes": minutes,
            "distill": card.get("notes", {}).get("distill"),
            "card": card,
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")

    points = []
    print("| minutes | chat top-1 [95 %] | chat KL | text KL | perplexity change |")
    print("|---|---|---|---|---|")
    for key in sorted(results, key=float):
        q = results[key]["card"]["quality"]
        chat = q["chat"]
        points.append((float(key), chat["top1_agreement"]))
        print(
            f"| {key} | {_ci(chat, 'top1_agreement')} "
            f"| {chat['kl_to_base']:.3f} | {q['kl_to_base']:.3f} "
            f"| {q['perplexity_change'] * 100:+.1f} % |"
        )
    reach = floor_budget(points, QUALITY_FLOOR)
    print(
        f"\nchat top-1 {QUALITY_FLOOR} (the router's floor), log-linear extrapolation: "
        + ("not reached (the fit does not rise)" if reach is None else f"~{reach:.0f} minutes")
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--only", default=",".join(TARGETS))
    parser.add_argument("--no-speed", action="store_true", help="skip vLLM speed (quality only)")
    parser.add_argument(
        "--distill-minutes",
        type=float,
        nargs="+",
        help="build the budget curve of prune-0.25+distill instead of the targets",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    speed = [] if args.no_speed else ["--speed"]
    return curve(args, speed) if args.distill_minutes else targets(args, speed)


if __name__ == "__main__":
    sys.exit(main())
