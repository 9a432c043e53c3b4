"""The CLI contract: exit codes, messages, JSON progress lines, and an untouched store."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from compress import store as store_mod
from compress.schema import DoneEvent, ProgressEvent, StartEvent, parse_event

from .conftest import REPO, json_lines, run_cli, tree
from .helpers import check_card


def test_list_recipes():
    out = run_cli("list-recipes")
    assert out.returncode == 0
    for name in ("w8a8", "w4a16", "fp8", "sparse-2:4", "prune-<fraction>"):
        assert name in out.stdout


def bad_build(store, *args):
    out = run_cli("build", "--store", str(store), "--progress-json", "--no-bars", *args)
    assert out.returncode == 2, out.stderr
    events = json_lines(out.stdout)
    assert [e["event"] for e in events] == ["error"]
    assert tree(store) == []  # nothing created, not even the store folder
    return events[0]["message"], out.stderr


def test_unknown_recipe(tiny_base, store):
    message, stderr = bad_build(store, "--base", str(tiny_base), "--recipe", "w3a7")
    assert "unknown recipe 'w3a7'" in message and "error:" in stderr


def test_missing_base(tmp_path, store):
    message, _ = bad_build(store, "--base", str(tmp_path / "nope"), "--recipe", "w8a8")
    assert "does not exist" in message


def test_group_size_not_dividing_hidden_size(tiny_base, store, tmp_path):
    recipe = tmp_path / "g48.yaml"
    recipe.write_text("steps:\n  - kind: quantize\n    scheme: w4a16\n    group_size: 48\n")
    message, _ = bad_build(store, "--base", str(tiny_base), "--recipe", str(recipe))
    assert "group size 48 does not divide" in message


@pytest.mark.parametrize("recipe", ["prune-1.5", "prune-0", "wanda-1.2"])
def test_fraction_out_of_range(tiny_base, store, recipe):
    message, _ = bad_build(store, "--base", str(tiny_base), "--recipe", recipe)
    assert "out of range" in message


def test_unsupported_architecture(tmp_path, store):
    base = tmp_path / "gpt2"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    (base / "model.safetensors").write_bytes(b"")
    message, _ = bad_build(store, "--base", str(base), "--recipe", "w8a8")
    assert "unsupported architecture GPT2LMHeadModel" in message


def test_speed_without_vllm_python(tiny_base, store):
    message, _ = bad_build(
        store, "--base", str(tiny_base), "--recipe", "fp8", "--speed", "--vllm-python", "/nope"
    )
    assert "--speed needs" in message


def test_progress_json_contract(tiny_base, store):
    out = run_cli(
        "build", "--base", str(tiny_base), "--recipe", "w4a16", "--store", str(store),
        "--calibration-samples", "4", "--eval-windows", "2", "--eval-passages", "2",
        "--chat-prompts", "3", "--chat-max-tokens", "6", "--progress-json", "--no-bars",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    events = json_lines(out.stdout)  # every stdout line is JSON
    parsed = [parse_event(e) for e in events]  # ... and an event of the schema
    assert isinstance(parsed[0], StartEvent) and isinstance(parsed[-1], DoneEvent)
    assert all(p is not None for p in parsed)
    assert any(isinstance(p, ProgressEvent) for p in parsed)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert events[0]["stages"] == ["load", "quantize", "save", "evaluate", "chat"]
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and all(0 <= e["percent"] <= 100 for e in progress)
    assert all(set(e) >= {"stage", "percent", "eta_s", "overall_percent"} for e in progress)
    done = events[-1]
    assert done["variant"] == "tiny-llama-w4a16-g32-awq-asym"
    assert done["skipped"] is False
    assert store_mod.is_complete(REPO / done["path"])
    card = done["card"]
    check_card(card)
    assert json.loads((Path(done["path"]) / store_mod.CARD).read_text()) == card
    for key in ("perplexity", "kl_to_base", "top1_agreement", "last_word_accuracy"):
        assert isinstance(card["quality"][key], float)
    assert card["quality"]["split"] == "test" and card["quality"]["windows"] == 2
    assert card["size"]["bytes"] > 0 and card["size"]["parameters"] > 0
    assert card["speed"]["status"].startswith("skipped")
    assert {"llmcompressor", "transformers", "torch"} <= set(card["versions"])

    again = run_cli(
        "build", "--base", str(tiny_base), "--recipe", "w4a16", "--store", str(store),
        "--calibration-samples", "4", "--progress-json", "--no-bars",
    )  # fmt: skip
    assert again.returncode == 0
    found = json_lines(again.stdout)[-1]
    assert found["skipped"] is True and found["card"] == card  # the stored card, unchanged

    rep = run_cli("report", "--store", str(store))
    assert rep.returncode == 0, rep.stderr
    paths = json.loads(rep.stdout.splitlines()[0])
    assert "tiny-llama-w4a16-g32-awq-asym" in Path(paths["markdown"]).read_text()


def start_slow_build(tiny_base, store) -> subprocess.Popen:
    """A build that spends a long time in distillation, to be killed there."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "compress", "build", "--base", str(tiny_base),
         "--recipe", "prune-0.25+distill", "--distill-seconds", "300",
         "--store", str(store), "--progress-json", "--no-bars"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        event = json.loads(line)
        if event["event"] == "progress" and event["stage"] == "distill":
            return proc
        assert time.monotonic() < deadline
    raise AssertionError("the build ended before distilling")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killed_build_leaves_no_variant(tiny_base, store, sig):
    proc = start_slow_build(tiny_base, store)
    assert list((store / ".tmp").iterdir())  # it is writing, in the temp area only
    proc.send_signal(sig)
    rest = proc.stdout.read()
    proc.wait(60)
    assert store_mod.list_variants(store) == []
    variant_dirs = [p for p in store.iterdir() if p.name != ".tmp"]
    assert all(not any(d.iterdir()) for d in variant_dirs)
    if sig == signal.SIGTERM:
        assert proc.returncode == 130
        assert json_lines(rest)[-1]["event"] == "error"
        assert list((store / ".tmp").iterdir()) == []
    else:
        # SIGKILL cannot be caught: the temp folder stays until the next job removes it.
        assert store_mod.clean_stale(store)
        assert list((store / ".tmp").iterdir()) == []
