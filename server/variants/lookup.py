"""Find a built variant in the store by recipe name, reading only card.json files.

The server imports nothing of compress/ but compress.schema (pydantic only): the store's layout
(`<store>/<base fp>/<hash>/card.json`) and the card's model are the contract between them.
"""

from __future__ import annotations

from pathlib import Path

from compress.schema import Card


def find_variant(store: Path, recipe: str, base_path: str | None = None) -> Path | None:
    """The newest complete variant built from `recipe` (on `base_path`, when given)."""
    found: list[tuple[str, Path]] = []
    for card_file in store.glob("*/*/card.json"):
        if card_file.parent.name.startswith("."):
            continue
        try:
            card = Card.model_validate_json(card_file.read_text())
        except (OSError, ValueError):  # unreadable, or not a card (ValidationError)
            continue
        if card.recipe.name != recipe:
            continue
        if base_path and Path(card.base.path or "").resolve() != Path(base_path).resolve():
            continue
        found.append((card.created or "", card_file.parent))
    return max(found)[1] if found else None
