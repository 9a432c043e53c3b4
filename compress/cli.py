"""`python -m compress` / `leanserve-compress`: build, report, list-recipes.

Exit status: 0 on success (a variant already in the store counts), 2 on bad input
(CompressError: the message says what is wrong, the store is untouched), 1 on any other
failure, 130 when interrupted. With --progress-json, stdout carries only JSON lines (the
models in compress.schema); everything human goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback
from pathlib import Path

from compress import chat_prompts, texts
from compress.errors import CompressError


def _terminate(signum, _frame):
    # SIGTERM unwinds like Ctrl-C, so the store's temp folder is removed on the way out.
    raise KeyboardInterrupt(f"signal {signum}")


def parser() -> argparse.ArgumentParser:
    from compress.speed import default_vllm_python

    top = argparse.ArgumentParser(prog="leanserve-compress", description=__doc__.splitlines()[0])
    sub = top.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="build one variant of a base model from a recipe")
    b.add_argument("--base", type=Path, required=True, help="base checkpoint folder (HF format)")
    b.add_argument("--recipe", required=True, help="name, chain (a+b), or recipe .yaml file")
    b.add_argument("--store", type=Path, default=Path(os.environ.get("LEANSERVE_STORE", "store")))
    b.add_argument("--calibration-file", type=Path, default=texts.CALIBRATION_TEXT)
    b.add_argument("--eval-file", type=Path, default=texts.HELDOUT_TEXT)
    b.add_argument("--calibration-samples", type=int, help="override every step's sample count")
    b.add_argument("--distill-seconds", type=float, help="override the distillation time budget")
    b.add_argument("--distill-tokens", type=int, help="override the distillation token budget")
    b.add_argument(
        "--eval-split",
        choices=texts.SPLITS,
        default="test",
        help="half of the eval text to measure on: test for cards, validation to choose settings",
    )
    b.add_argument(
        "--eval-windows",
        type=int,
        help="512-token windows of the split (default: all; the shipped text's test split has 29)",
    )
    b.add_argument(
        "--eval-passages",
        type=int,
        help="last-word passages of the split (default: all; the shipped test split has 50)",
    )
    b.add_argument(
        "--chat-prompts",
        type=int,
        help="chat agreement prompts (default: the whole split, 146 in the test half; 0: skip)",
    )
    b.add_argument("--chat-max-tokens", type=int, default=64, help="base answer length cap")
    b.add_argument(
        "--chat-split",
        choices=chat_prompts.SPLITS,
        default="test",
        help="half of the chat prompt set: test for cards, validation to choose settings",
    )
    b.add_argument("--speed", action="store_true", help="measure base and variant in vLLM")
    b.add_argument("--reference", type=Path, help="compare against this model, not --base")
    b.add_argument("--vllm-python", default=default_vllm_python(), help="python of the vLLM venv")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where to compute: auto is cuda when torch sees a GPU (the gateway passes its plan's)",
    )
    b.add_argument("--progress-json", action="store_true", help="JSON progress lines on stdout")
    b.add_argument("--no-bars", action="store_true", help="no progress bars on stderr")

    r = sub.add_parser("report", help="Markdown table and Pareto plot of a base's variants")
    r.add_argument("--store", type=Path, default=Path(os.environ.get("LEANSERVE_STORE", "store")))
    r.add_argument("--base", help="base fingerprint (default: every base in the store)")
    r.add_argument("--out", type=Path, help="output folder (default: the base's store folder)")

    sub.add_parser("list-recipes", help="named recipes and their steps")
    return top


def build(args: argparse.Namespace) -> int:
    from compress.build import BuildOptions, plan, run
    from compress.progress import Progress
    from compress.schema import DoneEvent, ErrorEvent

    if args.device == "cpu":
        # Before torch loads: llm-compressor computes on any GPU torch can see.
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    # Only JSON goes to the real stdout: libraries that print go to stderr.
    json_out = sys.stdout if args.progress_json else None
    sys.stdout = sys.stderr
    progress = Progress(json_out=json_out, bars=not args.no_bars)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        p = plan(
            BuildOptions(
                base=args.base,
                recipe=args.recipe,
                store=args.store,
                calibration_file=args.calibration_file,
                eval_file=args.eval_file,
                calibration_samples=args.calibration_samples,
                distill_seconds=args.distill_seconds,
                distill_tokens=args.distill_tokens,
                eval_windows=args.eval_windows,
                eval_passages=args.eval_passages,
                eval_split=args.eval_split,
                speed=args.speed,
                reference=args.reference,
                vllm_python=args.vllm_python,
                seed=args.seed,
                device=args.device,
                chat=chat_prompts.ChatOptions(
                    args.chat_prompts, args.chat_max_tokens, args.chat_split
                ),
            )
        )
        card, skipped = run(p, progress)
    except CompressError as exc:
        progress.close_bar()
        print(f"error: {exc}", file=sys.stderr)
        progress.emit(ErrorEvent(message=str(exc)))
        return 2
    except KeyboardInterrupt as exc:
        progress.close_bar()
        message = f"interrupted ({exc or 'Ctrl-C'}): nothing was written"
        print(message, file=sys.stderr)
        progress.emit(ErrorEvent(message=message))
        return 130
    except Exception as exc:  # noqa: BLE001 - any failure must reach the caller as an event
        progress.close_bar()
        traceback.print_exc()
        progress.emit(ErrorEvent(message=f"{type(exc).__name__}: {exc}"))
        return 1
    finally:
        sys.stdout = sys.__stdout__
    progress.close_bar()
    verb = "already in the store" if skipped else "built"
    print(f"{card.variant} {verb}: {p.path}", file=sys.stderr)
    if skipped and card.quality.split != args.eval_split:
        # The store keeps one card per variant: evaluation options do not name a new one.
        print(
            f"note: its card was measured on the {card.quality.split or 'whole'} eval text, "
            f"not the {args.eval_split} split",
            file=sys.stderr,
        )
    progress.emit(DoneEvent(variant=card.variant, path=str(p.path), card=card, skipped=skipped))
    return 0


def report(args: argparse.Namespace) -> int:
    from compress import report as report_mod
    from compress import store

    bases = [args.base] if args.base else store.bases(args.store)
    if not bases:
        print(f"error: no variants in store {args.store}", file=sys.stderr)
        return 2
    for fp in bases:
        variants = store.list_variants(args.store, fp)
        if not variants:
            print(f"error: no variants of base {fp} in {args.store}", file=sys.stderr)
            return 2
        out = args.out or args.store / fp
        md, png = report_mod.write(variants, out)
        print(json.dumps({"base": fp, "markdown": str(md), "plot": str(png)}))
    return 0


def list_recipes(_args: argparse.Namespace) -> int:
    from compress.recipes import named_recipes

    for name, description in named_recipes().items():
        print(f"{name:28s} {description}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return {"build": build, "report": report, "list-recipes": list_recipes}[args.command](args)
