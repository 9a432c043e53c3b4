"""Small helpers shared by the compress tests (imported, not fixtures)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from compress.build import BuildOptions, plan, run
from compress.progress import Progress


def build(base: Path, recipe: str, store: Path, **options) -> tuple[dict, Path, list[dict]]:
    """Build in-process with tiny budgets; returns (card, variant folder, JSON events)."""
    defaults = {
        "calibration_samples": 4,
        "distill_seconds": 2.0,
        "eval_windows": 2,
        "eval_passages": 3,
    }
    p = plan(BuildOptions(base=base, recipe=recipe, store=store, **{**defaults, **options}))
    out = io.StringIO()
    card, _skipped = run(p, Progress(json_out=out, bars=False))
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    return card, p.path, events
