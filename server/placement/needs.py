"""What each engine needs: its weights (from the card once built, estimated before) and KV budget.

Estimates before a variant is built: the base's bytes times a ratio per recipe step. They are
estimates, kept on the safe side (checkpoints keep embeddings, norms and quantization scales
in 16 bits, so a 4-bit checkpoint is well above a quarter of the base):

| step | ratio | why |
|---|---|---|
| w8a8 | 0.60 | int8 Linear weights, 16-bit embeddings and scales |
| w4a16 | 0.45 | int4 Linear weights in groups, 16-bit embeddings |
| fp8, fp8_dynamic | 0.55 | 8-bit float Linear weights |
| prune-f | 1 - 0.88 f | layers dropped; embeddings stay (prune-0.25: 0.78) |
| sparse-2:4, wanda-s, distill | 1.0 | stored dense / weights unchanged in size |
| anything else (a recipe file) | 1.0 | unknown: assume the base's size |

A chain multiplies its steps (prune-0.25+distill+w8a8: 0.78 x 0.6).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

GIB = 2**30
# The embedded default model's converted checkpoint (docs/toolchain.md), before it is converted.
DEFAULT_BASE_BYTES = 269_060_552
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth")

RECIPE_SIZE_RATIOS = {
    "w8a8": 0.60,
    "w4a16": 0.45,
    "fp8": 0.55,
    "fp8_dynamic": 0.55,
    "distill": 1.0,
    "sparse-2:4": 1.0,
    "sparse-2-4": 1.0,
}
_PRUNE = re.compile(r"^prune-(?P<f>[0-9.]+)(-angular)?$")


@dataclass(frozen=True)
class ModelNeed:
    name: str  # the public model name, as served
    role: Literal["base", "variant"]
    weight_bytes: int | None  # None: unknown (a hub id not downloaded yet)
    kv_bytes: int
    estimated: bool = False  # weight_bytes from the ratio table, not from a card or the files
    recipe: str | None = None
    weight: float = 1.0  # share of the cores a node splits between engines
    tensor_parallel: int | None = None  # asked for (GPUs); None: the planner picks


def size_ratio(recipe: str) -> float:
    """The estimated size of a recipe's variant relative to its base (table above)."""
    ratio = 1.0
    for token in recipe.split("+"):
        if token in RECIPE_SIZE_RATIOS:
            ratio *= RECIPE_SIZE_RATIOS[token]
        elif m := _PRUNE.match(token):
            ratio *= 1 - 0.88 * float(m["f"])
        else:
            # Named variations such as w4a16-g32 keep their family's size.
            family = next((k for k in RECIPE_SIZE_RATIOS if token.startswith(k + "-")), None)
            ratio *= RECIPE_SIZE_RATIOS[family] if family else 1.0
    return ratio


def checkpoint_bytes(path: Path) -> int | None:
    """Bytes of a checkpoint folder's weight files; None when it has none."""
    if not path.is_dir():
        return None
    total = sum(f.stat().st_size for pattern in WEIGHT_FILES for f in path.glob(pattern))
    return total or None


def base_checkpoint(settings) -> Path | None:
    """Where the prepared base is (or will be), known without preparing it; None: a hub id."""
    from server import basemodel

    model = settings.model
    packaged = basemodel.packaged_models.find(model)
    if packaged is not None:
        return settings.home / "models" / packaged.name
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        return settings.home / "models" / basemodel.public_name(path.stem)
    return path if path.is_dir() else None


def base_bytes(settings) -> int | None:
    from server import basemodel

    path = base_checkpoint(settings)
    found = checkpoint_bytes(path) if path is not None else None
    packaged = basemodel.packaged_models.find(settings.model)
    if found is None and packaged is not None:
        return packaged.checkpoint_bytes  # its size once converted (docs/toolchain.md)
    return found


def variant_id(recipe: str) -> str:
    return Path(recipe).stem if recipe.endswith((".yaml", ".yml")) else recipe


def built_bytes(settings, recipe: str) -> int | None:
    """The card's size of a variant already in the store; None when it is not built yet."""
    from compress.schema import Card
    from server.variants.lookup import find_variant

    base = base_checkpoint(settings)
    found = find_variant(
        settings.home / "variants", recipe, str(base) if base is not None else None
    )
    if found is None:
        return None
    try:
        return Card.model_validate_json((found / "card.json").read_text()).size.bytes
    except (OSError, ValueError):
        return None


def variant_need(
    name: str, recipe: str, base_weight: int | None, kv_bytes: int, weight: float = 1.0,
    built: int | None = None,
) -> ModelNeed:  # fmt: skip
    if built is not None:
        return ModelNeed(name, "variant", built, kv_bytes, False, recipe, weight)
    estimate = None if base_weight is None else int(base_weight * size_ratio(recipe))
    return ModelNeed(name, "variant", estimate, kv_bytes, True, recipe, weight)


def model_needs(settings) -> list[ModelNeed]:
    """The base and every declared variant that runs locally, as the settings declare them."""
    from server import basemodel

    base = basemodel.expected_name(settings.model)
    if base in settings.remote_engines:
        return []  # a remote base: no local engine, and nothing is built here
    engine = settings.engine
    kv = int(engine.kv_cache_gib * GIB)
    base_weight = base_bytes(settings)
    variants = []
    for recipe in settings.variants:
        vid = variant_id(recipe)
        name = f"{base}:{vid}"
        if name in settings.remote_engines:
            continue
        weight = engine.weights.get(vid, 1.0)
        variants.append(
            variant_need(name, recipe, base_weight, kv, weight, built_bytes(settings, recipe))
        )
    base_share = engine.weights.get("base", sum(v.weight for v in variants) or 1.0)
    need = ModelNeed(
        base, "base", base_weight, kv, False, None, base_share, engine.tensor_parallel_size
    )
    return [need, *variants]
