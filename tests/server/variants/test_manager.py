"""The variant manager with the real compress CLI, up to the point where an engine would start."""

from __future__ import annotations

import asyncio
import json

import pytest

from server.backends.registry import Registry
from server.metrics.registry import Metrics
from server.settings import load_settings
from server.variants.lookup import find_variant
from server.variants.service import VariantManager, is_recipe_name, variant_id
from tests.server.gateway import REPO

COMPRESS_PYTHON = REPO / ".venv-compress/bin/python"


@pytest.mark.parametrize(
    "name", ["w8a8", "w4a16", "prune-0.25", "prune-0.25+distill", "sparse-2:4", "wanda-0.5"]
)
def test_recipe_names_accepted(name):
    assert is_recipe_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "../x",
        "/etc/passwd",
        "a/b",
        ".x",
        "W8A8",
        "a b",
        "",
        "x.yaml/..",
        "w8a8\n",
        "r.yaml",
        "r.yml",
    ],
)
def test_recipe_names_refused(name):
    # Whole names only ("w8a8\n" passed a `$` anchor), and no recipe files from the API.
    assert not is_recipe_name(name)


def test_variant_id_of_a_recipe_file():
    assert variant_id("/recipes/my-w8a8.yaml") == "my-w8a8"
    assert variant_id("w8a8") == "w8a8"


@pytest.mark.skipif(
    not COMPRESS_PYTHON.exists(), reason="needs the compress environment (make venv-compress)"
)
def test_failed_build_is_reported_and_the_queue_goes_on(tmp_path):
    settings = load_settings(
        home=tmp_path, variants=["no-such-recipe"], compress_python=str(COMPRESS_PYTHON)
    )
    base = tmp_path / "base"
    base.mkdir()
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "vocab_size": 49152,
    }
    (base / "config.json").write_text(json.dumps(config))
    (base / "model.safetensors").write_bytes(b"")  # never read: the recipe is refused first

    async def scenario():
        metrics = Metrics()
        manager = VariantManager(settings, Registry("base"), metrics, lambda: _path(base))
        await manager.start()
        try:
            for _ in range(600):
                if manager.variants["no-such-recipe"].state == "failed":
                    break
                await asyncio.sleep(0.1)
        finally:
            await manager.stop()
        return manager.view(manager.variants["no-such-recipe"], detail=True), metrics

    view, metrics = asyncio.run(scenario())
    assert view["state"] == "failed"
    assert "no-such-recipe" in view["error"]
    assert metrics.build_failures.labels("base:no-such-recipe")._value.get() == 1
    assert not (tmp_path / "variants").exists() or not any(
        (tmp_path / "variants").rglob("card.json")
    )


async def _path(p):
    return str(p)


def test_find_variant_reads_only_cards(tmp_path):
    newer = tmp_path / "fp" / "h2"
    older = tmp_path / "fp" / "h1"
    temp = tmp_path / "fp" / ".tmp"
    for folder, created in ((newer, "2026-02"), (older, "2026-01"), (temp, "2026-03")):
        folder.mkdir(parents=True)
        (folder / "card.json").write_text(
            f'{{"created": "{created}", "recipe": {{"name": "w8a8"}}, "base": {{"path": "/b"}}}}'
        )
    assert find_variant(tmp_path, "w8a8") == newer
    assert find_variant(tmp_path, "w8a8", "/b") == newer
    assert find_variant(tmp_path, "w8a8", "/other") is None
    assert find_variant(tmp_path, "w4a16") is None
