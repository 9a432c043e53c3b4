"""The variant store: `<store>/<base fingerprint>/<recipe hash>/` = checkpoint + recipe + card.

A variant is built in `<store>/.tmp/<hash>.<pid>/` and published with one rename, so its
folder either holds a complete variant or does not exist. A job killed with SIGKILL leaves
its temp folder behind; the next job removes temp folders whose process is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from compress.schema import Card

CARD = "card.json"
RECIPE = "recipe.yaml"
BASE_INFO = "base.json"
TMP = ".tmp"


def variant_dir(store: Path, base_fp: str, recipe_hash: str) -> Path:
    return store / base_fp / recipe_hash


def is_complete(path: Path) -> bool:
    return (path / CARD).is_file() and (path / "config.json").is_file()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(store: Path) -> list[Path]:
    """Remove temp folders left by jobs that no longer run."""
    removed = []
    tmp_root = store / TMP
    if not tmp_root.is_dir():
        return removed
    for path in tmp_root.iterdir():
        pid = path.name.rsplit(".", 2)[-2] if path.name.count(".") >= 2 else ""
        if not pid.isdigit() or not _pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


@contextlib.contextmanager
def building(store: Path, base_fp: str, recipe_hash: str) -> Iterator[Path]:
    """A temp folder to build in; on clean exit it becomes the variant's folder.

    Any exception (KeyboardInterrupt and SystemExit from signals included) removes it.
    """
    tmp_root = store / TMP
    tmp_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{recipe_hash}.{os.getpid()}.", dir=tmp_root))
    try:
        yield tmp
        # mkdtemp makes the folder private; a published variant is read by servers and people.
        tmp.chmod(0o755)
        for path in tmp.iterdir():
            path.chmod(0o644)
        target = variant_dir(store, base_fp, recipe_hash)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(tmp, target)
        except OSError:
            # Another job published the same variant first: same recipe, same result.
            if not is_complete(target):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_base_info(store: Path, base_fp: str, info: dict) -> None:
    path = store / base_fp / BASE_INFO
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info, indent=2))
    os.replace(tmp, path)


def read_card(path: Path) -> Card:
    return Card.model_validate_json((path / CARD).read_text())


def list_variants(store: Path, base_fp: str | None = None) -> list[tuple[Path, Card]]:
    """Every complete variant (optionally of one base), as (folder, card)."""
    out = []
    if not store.is_dir():
        return out
    bases = [store / base_fp] if base_fp else sorted(p for p in store.iterdir() if p.is_dir())
    for base in bases:
        if base.name == TMP or not base.is_dir():
            continue
        for path in sorted(base.iterdir()):
            if path.is_dir() and is_complete(path):
                out.append((path, read_card(path)))
    return out


def bases(store: Path) -> list[str]:
    if not store.is_dir():
        return []
    return sorted(p.name for p in store.iterdir() if p.is_dir() and p.name != TMP)
