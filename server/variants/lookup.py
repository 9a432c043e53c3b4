"""Find a built variant in the store by recipe name, reading only card.json files.

The server never imports compress/: the store's layout (`<store>/<base fp>/<hash>/card.json`)
and the card's `recipe.name` and `base.path` fields are the contract between them.
"""

from __future__ import annotations

import json
from pathlib import Path


def find_variant(store: Path, recipe: str, base_path: str | None = None) -> Path | None:
    """The newest complete variant built from `recipe` (on `base_path`, when given)."""
    found: list[tuple[str, Path]] = []
    for card_file in store.glob("*/*/card.json"):
        if card_file.parent.name.startswith("."):
            continue
        try:
            card = json.loads(card_file.read_text())
        except (OSError, ValueError):
            continue
        if (card.get("recipe") or {}).get("name") != recipe:
            continue
        if (
            base_path
            and Path((card.get("base") or {}).get("path", "")).resolve()
            != Path(base_path).resolve()
        ):
            continue
        found.append((str(card.get("created", "")), card_file.parent))
    return max(found)[1] if found else None
