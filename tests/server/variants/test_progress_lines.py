"""The variant manager reads a build's stdout through compress.schema's progress-line models.

The build here is a stand-in for the compress CLI (a shell script that prints given lines and
exits with a given status), because the real CLI cannot be made to write the lines a reader
must survive: unknown kinds and keys (from a newer compress) and malformed ones.
"""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

from server.backends.registry import Registry
from server.metrics.registry import Metrics
from server.settings import load_settings
from server.variants.service import Variant, VariantManager
from tests.server.gateway import REPO

CARD = json.loads((REPO / "bench" / "results" / "w4a16.card.json").read_text())


def stand_in_compress(tmp_path: Path, lines: list, status: int = 0) -> Path:
    out = tmp_path / "stdout.txt"
    out.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    script = tmp_path / "stand-in-compress"
    script.write_text(f"#!/bin/sh\ncat '{out}'\nexit {status}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def build(tmp_path: Path, lines: list, status: int = 0) -> tuple[Variant, Metrics]:
    settings = load_settings(
        home=tmp_path, compress_python=str(stand_in_compress(tmp_path, lines, status))
    )
    metrics = Metrics()

    async def base() -> str:
        return str(tmp_path / "base")

    async def scenario() -> Variant:
        manager = VariantManager(settings, Registry("m"), metrics, base)
        variant = manager.request("w4a16")
        await manager._build(variant)
        return variant

    return asyncio.run(scenario()), metrics


def test_unknown_kinds_keys_and_noise_are_ignored(tmp_path):
    done = {"event": "done", "variant": CARD["variant"], "path": "/store/f/h", "card": CARD}
    variant, metrics = build(
        tmp_path,
        [
            "Loading checkpoint shards: 100%",  # not JSON: a library's print
            {"event": "start", "variant": "v", "stages": ["load", "quantize"], "gpu": 0},
            {"event": "heartbeat", "at": 1},  # a kind this gateway does not know
            {"event": "stage", "stage": "quantize", "index": 2, "stages": 2},
            {"event": "progress", "stage": "quantize", "percent": 50.0, "eta_s": None,
             "overall_percent": 75.0, "detail": {}, "new_key": [1]},
            {**done, "skipped": False, "also_new": True},
        ],
    )  # fmt: skip
    assert variant.state == "built" and variant.error is None
    assert variant.stage == "quantize" and variant.path == "/store/f/h" and not variant.reused
    assert variant.card == CARD  # what GET /v1/variants shows: the card as compress wrote it
    assert metrics.build_progress.labels("m:w4a16")._value.get() == 1.0


def test_progress_is_read_from_the_lines(tmp_path):
    # Cut short after a progress line: the manager keeps the last overall percent it read.
    variant, _ = build(
        tmp_path,
        [{"event": "progress", "stage": "distill", "percent": 10.0, "overall_percent": 42.5}],
        status=1,
    )
    assert variant.state == "failed" and variant.percent == 42.5 and variant.stage == "distill"
    assert "compress exited with code 1" in variant.error


def test_a_card_of_the_wrong_shape_fails_the_build(tmp_path):
    bad = {**CARD, "quality": {**CARD["quality"], "top1_agreement": "high"}}
    variant, metrics = build(tmp_path, [{"event": "done", "path": "/store/f/h", "card": bad}])
    # Served, it would be routed on a quality nobody measured; refused, the error says why.
    assert variant.state == "failed" and variant.card is None and variant.path is None
    assert "quality.top1_agreement" in variant.error and "cannot read" in variant.error


def test_a_malformed_progress_line_does_not_stop_the_build(tmp_path):
    variant, _ = build(
        tmp_path,
        [
            {"event": "progress", "percent": "half", "overall_percent": "half"},
            {"event": "done", "path": "/store/f/h", "card": CARD, "skipped": True},
        ],
    )
    assert variant.state == "built" and variant.reused and variant.card == CARD


def test_the_error_line_is_the_failure_reason(tmp_path):
    variant, _ = build(tmp_path, [{"event": "error", "message": "unknown recipe 'w4a16'"}], 2)
    assert variant.state == "failed" and variant.error == "unknown recipe 'w4a16'"
