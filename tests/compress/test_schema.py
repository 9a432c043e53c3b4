"""The card and progress-line models (compress/schema.py) against real cards and old readers.

Every card in bench/results was written by an earlier compress, before the schema existed:
each must validate and dump back to the very same JSON, or existing stores would change
meaning (or stop loading) under the new readers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from compress import report
from compress.schema import (
    SCHEMA_VERSION,
    Card,
    DoneEvent,
    ErrorEvent,
    LogEvent,
    ProgressEvent,
    StageEvent,
    StartEvent,
    parse_event,
    problems,
)

from .conftest import REPO

RESULTS = REPO / "bench" / "results"


def find_cards(node, where: str) -> list[tuple[str, dict]]:
    """Card objects anywhere in a JSON document (results files nest them under labels)."""
    if isinstance(node, dict):
        if "recipe" in node and "quality" in node:
            return [(where, node)]
        return [c for k, v in node.items() for c in find_cards(v, f"{where}/{k}")]
    if isinstance(node, list):
        return [c for i, v in enumerate(node) for c in find_cards(v, f"{where}/{i}")]
    return []


CARDS = [
    c
    for path in sorted(RESULTS.glob("*.json"))
    for c in find_cards(json.loads(path.read_text()), path.name)
]


def test_the_results_hold_cards():
    # Guards the walk: the files named *.card.json and compress.json's three at least.
    assert len(CARDS) >= 8
    assert {w.split("/")[0] for w, _ in CARDS} >= {"compress.json", "w4a16.card.json"}


@pytest.mark.parametrize(("where", "data"), CARDS, ids=[w for w, _ in CARDS])
def test_stored_cards_validate_and_round_trip(where, data):
    card = Card.model_validate(data)
    assert card.schema_version == 1  # written before the field existed: version 1
    dumped = card.dump()
    assert dumped == data and list(dumped) == list(data)  # same keys, values and order
    assert json.dumps(dumped) == json.dumps(data)
    assert Card.model_validate(dumped) == card
    # The figures readers use come through typed.
    assert isinstance(card.quality.kl_to_base, float) and card.quality.kl_to_base >= 0
    assert isinstance(card.size.bytes, int) and card.size.bytes > 0
    assert card.recipe.name and card.recipe.hash and card.recipe.steps


def test_the_report_reads_stored_cards(tmp_path: Path):
    w4a16 = json.loads((RESULTS / "w4a16.card.json").read_text())
    md, _png = report.write([(tmp_path / "h", Card.model_validate(w4a16))], tmp_path / "out")
    text = md.read_text()
    assert "| smollm2-135m-instruct-w4a16-g32-awq-asym | 16.60 | +5.6 % | 0.0493 |" in text
    assert "| 0.57x | 24.7 | 0.145 |" in text  # speed-up at 32 streams, tok/s and TTFT at 1
    assert "Base: perplexity 15.73" in text


def test_partial_and_old_cards_read_as_unknown_figures():
    card = Card.model_validate({"recipe": {"name": "w8a8"}, "speed": None})
    assert card.schema_version == SCHEMA_VERSION == 1
    assert card.quality.top1_agreement is None and card.speed.speedup_32 is None
    assert card.speed.variant.streams_1.ttft_s_mean is None and card.base.path is None
    assert card.dump() == {"recipe": {"name": "w8a8"}}  # nothing filled in on the way out


def test_unknown_keys_are_kept_and_ignored():
    data = {"schema_version": 2, "future": {"x": 1}, "quality": {"kl_to_base": 0.1, "new": 3}}
    card = Card.model_validate(data)
    assert card.schema_version == 2 and card.quality.kl_to_base == 0.1
    assert card.dump() == data


@pytest.mark.parametrize(
    "bad",
    [
        {"quality": {"top1_agreement": "high"}},
        {"size": {"bytes": 1.5}},
        {"speed": {"variant": {"streams_1": {"tokens_per_s": []}}}},
        {"quality": 3},
    ],
)
def test_wrong_types_are_refused(bad):
    with pytest.raises(ValidationError) as exc:
        Card.model_validate(bad)
    assert problems(exc.value)


def test_progress_lines_parse_and_dump():
    lines = [
        StartEvent(variant="v", recipe="w8a8", recipe_hash="h", base_fingerprint="f", stages=["a"]),
        StageEvent(stage="a", index=1, stages=1),
        ProgressEvent(stage="a", percent=50.0, eta_s=None, overall_percent=50.0, detail={}),
        LogEvent(message="m"),
        DoneEvent(
            variant="v", path="/s/f/h", card=Card(schema_version=1, variant="v"), skipped=True
        ),
        ErrorEvent(message="boom"),
    ]
    for event in lines:
        data = json.loads(json.dumps(event.dump()))
        assert data["event"] == event.kind and next(iter(data)) == "event"
        assert parse_event(data) == event
    progress = lines[2].dump()
    assert progress["eta_s"] is None and set(progress) >= {"stage", "percent", "overall_percent"}
    assert lines[4].dump()["card"] == {"schema_version": 1, "variant": "v"}


def test_readers_ignore_unknown_kinds_and_keys():
    assert parse_event({"event": "heartbeat", "at": 1}) is None
    assert parse_event([1, 2]) is None and parse_event("done") is None
    event = parse_event({"event": "progress", "overall_percent": 12.5, "gpu": "0"})
    assert isinstance(event, ProgressEvent) and event.overall_percent == 12.5
    assert event.percent is None and event.detail == {}


def test_a_known_kind_with_wrong_fields_is_an_error():
    with pytest.raises(ValidationError):
        parse_event({"event": "done", "card": {}})  # no path: nothing to serve
    with pytest.raises(ValidationError):
        parse_event({"event": "progress", "percent": "half"})
