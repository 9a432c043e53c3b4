"""Regenerate calibration.txt and heldout.txt from CPython 3.11's own documentation.

Provenance: the text is the Python Language Reference as shipped inside CPython
(`pydoc_data.topics`) and the docstrings of the pure-Python standard library, both
Copyright (c) Python Software Foundation, distributed under the PSF License Agreement
(redistribution permitted with the notice kept; see LICENSE-PSF.txt here).

No offline source of public-domain English prose was found (the PyPI candidates
shipped no text), so this is the documented fallback. The split is by topic and by
module, so held-out text never shares a document with calibration text, and any
paragraph that appears in both is dropped from calibration.

Run: python compress/data/build_data.py  (from the repository root, Python 3.11)
"""

from __future__ import annotations

import ast
import hashlib
import sys
import sysconfig
from pathlib import Path

HERE = Path(__file__).parent
CALIBRATION_BYTES = 1_600_000  # enough for calibration and ~30 min of distillation
HELDOUT_TOPICS_EVERY = 4  # one topic in four goes to held-out text


def bucket(name: str) -> int:
    return int(hashlib.sha256(name.encode()).hexdigest(), 16) % HELDOUT_TOPICS_EVERY


def paragraphs(text: str) -> list[str]:
    return [p.strip() for p in text.split("\n\n") if p.strip()]


def stdlib_docstrings() -> list[tuple[str, str]]:
    """(module, docstring) pairs of long prose docstrings, in a stable order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if any(part in rel for part in ("test", "idlelib", "site-packages", "lib2to3")):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 300:
                    out.append((rel, doc))
    return out


def main() -> None:
    if sys.version_info[:2] != (3, 11):
        raise SystemExit("run with Python 3.11 so the text matches the shipped files")
    from pydoc_data.topics import topics

    heldout, calibration = [], []
    for name in sorted(topics):
        (heldout if bucket(name) == 0 else calibration).append(topics[name].strip())
    held_paras = {p for doc in heldout for p in paragraphs(doc)}

    size = sum(len(d) for d in calibration)
    for module, doc in stdlib_docstrings():
        if size >= CALIBRATION_BYTES:
            break
        # Held-out topics are about the language; keep modules in one split only.
        if bucket("module:" + module) == 0:
            continue
        calibration.append(doc)
        size += len(doc)

    seen: set[str] = set()
    kept = []
    for doc in calibration:
        paras = [p for p in paragraphs(doc) if p not in held_paras and p not in seen]
        seen.update(paras)
        if paras:
            kept.append("\n\n".join(paras))
    (HERE / "calibration.txt").write_text("\n\n".join(kept) + "\n")
    (HERE / "heldout.txt").write_text("\n\n".join(heldout) + "\n")


if __name__ == "__main__":
    main()
