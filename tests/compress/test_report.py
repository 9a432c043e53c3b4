from __future__ import annotations

import io
import json
from pathlib import Path

from compress import report
from compress.progress import Progress
from compress.schema import Card


def fake_card(name: str, kl: float, size_ratio: float, speedup: float | None) -> Card:
    speed = {"status": "skipped"}
    if speedup is not None:
        speed = {
            "status": "measured",
            "base": {"streams_32": {"tokens_per_s": 700.0}},
            "variant": {
                "streams_32": {"tokens_per_s": 700.0 * speedup},
                "streams_1": {"tokens_per_s": 60.0, "ttft_s_mean": 0.05},
            },
            "speedup_32": speedup,
        }
    # A partial card (no recipe, data, serving ...): the report reads only these fields.
    return Card.model_validate(
        {
            "variant": f"m-{name}",
            "base": {
                "name": "m",
                "fingerprint": "f",
                "size_bytes": 269_000_000,
                "parameters": 135_000_000,
            },
            "quality": {
                "perplexity": 16.0 * (1 + kl),
                "perplexity_change": kl,
                "base_perplexity": 16.0,
                "kl_to_base": kl,
                "top1_agreement": 1 - kl,
                "last_word_accuracy": 0.4,
                "base_last_word_accuracy": 0.4,
            },
            "size": {"bytes": round(269e6 * size_ratio), "size_ratio": size_ratio},
            "speed": speed,
        }
    )


def test_pareto_frontier():
    # (throughput, kl): b dominates c; a and b trade off.
    pts = [(1.0, 0.0), (1.2, 0.02), (1.1, 0.05), (1.3, 0.3)]
    assert report.pareto(pts, maximize_x=True) == [0, 1, 3]
    assert report.pareto([(0.6, 0.02), (0.4, 0.05), (0.7, 0.03)], maximize_x=False) == [0, 1]


def test_report_writes_table_and_plot(tmp_path: Path):
    variants = [
        (tmp_path / "a", fake_card("w8a8", 0.015, 0.61, 1.2)),
        (tmp_path / "b", fake_card("w4a16-g64", 0.08, 0.42, 0.7)),
        (tmp_path / "c", fake_card("prune0.25", 0.4, 0.79, None)),
    ]
    md, png = report.write(variants, tmp_path / "out")
    text = md.read_text()
    assert text.count("| m-") == 3
    assert "+1.5 %" in text and "1.20x" in text
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_progress_lines_are_json_with_overall_percent():
    out = io.StringIO()
    p = Progress(json_out=out, bars=False)
    p.plan(["a", "b"])
    p.stage("a", total=4)
    p.update(2, force=True)
    p.finish_stage()
    p.stage("b")
    p.update(50, force=True)
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    progress = [e for e in events if e["event"] == "progress"]
    assert [e["overall_percent"] for e in progress] == [25.0, 50.0, 75.0]
    assert [e["percent"] for e in progress] == [50.0, 100.0, 50.0]
    assert events[0] == {"event": "stage", "stage": "a", "index": 1, "stages": 2}
