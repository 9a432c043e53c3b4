from __future__ import annotations

import os
import subprocess

import pytest

from compress import store

from .conftest import tree
from .helpers import build


def test_building_publishes_with_one_rename(tmp_path):
    with store.building(tmp_path, "base", "abc") as tmp:
        (tmp / "config.json").write_text("{}")
        (tmp / "card.json").write_text("{}")
        assert not (tmp_path / "base" / "abc").exists()
    assert store.is_complete(tmp_path / "base" / "abc")
    assert list((tmp_path / ".tmp").iterdir()) == []


def test_a_failed_build_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), store.building(tmp_path, "base", "abc") as tmp:
        (tmp / "config.json").write_text("{}")
        raise RuntimeError("boom")
    assert tree(tmp_path) == [".tmp"]


def test_stale_temp_folders_of_dead_jobs_are_removed(tmp_path):
    dead = subprocess.run(["true"], check=True)  # noqa: F841 - a pid that has exited
    proc = subprocess.Popen(["true"])
    proc.wait()
    stale = tmp_path / ".tmp" / f"abc.{proc.pid}.xyz"
    stale.mkdir(parents=True)
    live = tmp_path / ".tmp" / f"abc.{os.getpid()}.xyz"
    live.mkdir()
    assert store.clean_stale(tmp_path) == [stale]
    assert live.exists()


def test_second_build_is_skipped(tiny_base, store):
    from compress.build import BuildOptions, plan, run
    from compress.progress import Progress

    card, path, _ = build(tiny_base, "fp8", store)
    again = plan(BuildOptions(base=tiny_base, recipe="fp8", store=store, calibration_samples=4))
    card2, skipped = run(again, Progress(bars=False))
    assert skipped and card2.dump() == card and again.path == path  # the stored card, as is
    assert [p for p, _ in store_list(store)] == [path]


def store_list(root):
    return store.list_variants(root)
