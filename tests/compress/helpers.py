"""Small helpers shared by the compress tests (imported, not fixtures)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from compress import store as store_mod
from compress.build import BuildOptions, plan, run
from compress.chat_prompts import ChatOptions
from compress.progress import Progress
from compress.schema import SCHEMA_VERSION, Card, ModelRef, Quality, Size


def build(base: Path, recipe: str, store: Path, **options) -> tuple[dict, Path, list[dict]]:
    """Build in-process with tiny budgets; returns (card.json's content, variant folder, JSON
    events). Every card built here is checked against the schema on the way."""
    defaults = {
        "calibration_samples": 4,
        "distill_seconds": 2.0,
        "eval_windows": 2,
        "eval_passages": 3,
        "chat": ChatOptions(prompts=3, max_tokens=6, exact_match_tokens=4),
    }
    p = plan(BuildOptions(base=base, recipe=recipe, store=store, **{**defaults, **options}))
    out = io.StringIO()
    card, _skipped = run(p, Progress(json_out=out, bars=False))
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    on_disk = json.loads((p.path / store_mod.CARD).read_text())
    check_card(on_disk)
    assert Card.model_validate(on_disk) == card
    return on_disk, p.path, events


def check_card(data: dict) -> Card:
    """A card compress just wrote: valid, complete (every field of the schema, nothing else at
    the top level or in the measured sections), and its model dumps back to the same JSON."""
    card = Card.model_validate(data)
    assert data["schema_version"] == SCHEMA_VERSION
    assert list(data) == list(Card.model_fields)
    for section, model in (("quality", Quality), ("size", Size), ("base", ModelRef)):
        assert list(data[section]) == list(model.model_fields), section
    assert card.dump() == data
    return card
