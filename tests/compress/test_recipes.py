from __future__ import annotations

from pathlib import Path

import pytest

from compress.checkpoint import ModelShape
from compress.errors import CompressError
from compress.recipes import (
    DistillStep,
    LayerPruneStep,
    QuantizeStep,
    SparsifyStep,
    load_recipe,
    named_recipes,
    with_budget,
)

SMOLLM2 = ModelShape("LlamaForCausalLM", 576, 30, 1536, 576, None)


@pytest.mark.parametrize(
    ("name", "tag"),
    [
        ("w8a8", "w8a8"),
        ("w4a16", "w4a16-g32-awq-asym"),
        ("fp8", "fp8-dynamic"),
        ("prune-0.25", "prune0.25"),
        ("prune-0.25-angular", "prune0.25-angular"),
        ("prune-0.25+distill", "prune0.25-distill"),
        ("wanda-0.5", "wanda0.5"),
        ("sparse-2:4", "sparsegpt-2of4"),
        ("prune-0.15+distill+w8a8", "prune0.15-distill-w8a8"),
    ],
)
def test_named_recipes_resolve_for_smollm2(name, tag):
    recipe = load_recipe(name).check(SMOLLM2)
    assert recipe.tag() == tag


def test_w4a16_picks_a_group_size_dividing_every_width():
    step = QuantizeStep(scheme="w4a16", group_size=None).check(SMOLLM2)
    assert step.group_size == 64  # 128 does not divide 576


def test_group_size_not_dividing_hidden_size_is_refused():
    with pytest.raises(CompressError, match="group size 128 does not divide"):
        QuantizeStep(scheme="w4a16", group_size=128).check(SMOLLM2)


@pytest.mark.parametrize("name", ["prune-1.5", "prune-0", "prune-1", "wanda-2", "prune-x"])
def test_fraction_out_of_range_is_refused(name):
    with pytest.raises(CompressError, match="out of range|not a number"):
        load_recipe(name)


def test_fraction_dropping_no_layer_is_refused():
    with pytest.raises(CompressError, match="at least one"):
        load_recipe("prune-0.01").check(SMOLLM2)


def test_unknown_recipe_names_the_known_ones():
    with pytest.raises(CompressError, match="unknown recipe 'w3a7'.*w8a8"):
        load_recipe("w3a7")


def test_yaml_recipe_splices_named_recipes(tmp_path: Path):
    path = tmp_path / "hybrid.yaml"
    path.write_text(
        "name: hybrid\nsteps:\n  - prune-0.2\n  - kind: distill\n    max_seconds: 5\n  - w8a8\n"
    )
    recipe = load_recipe(str(path))
    assert recipe.name == "hybrid"
    assert [type(s) for s in recipe.steps] == [LayerPruneStep, DistillStep, QuantizeStep]
    assert recipe.steps[1].max_seconds == 5


def test_yaml_unknown_key_is_an_error(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("steps:\n  - kind: quantize\n    scheme: w8a8\n    bits: 3\n")
    with pytest.raises(CompressError, match="bits"):
        load_recipe(str(path))


def test_quantization_must_be_last():
    with pytest.raises(CompressError, match="must be the last step"):
        load_recipe("w8a8+distill").check(SMOLLM2)


def test_already_quantized_base_is_refused():
    gptq = ModelShape("LlamaForCausalLM", 576, 30, 1536, 576, "gptq")
    with pytest.raises(CompressError, match="already quantized"):
        load_recipe("w8a8").check(gptq)


def test_hash_is_stable_and_follows_budgets():
    a = load_recipe("prune-0.25+distill").check(SMOLLM2)
    b = load_recipe("prune-0.25+distill").check(SMOLLM2)
    c = with_budget(a, distill_seconds=10).check(SMOLLM2)
    assert a.digest() == b.digest()
    assert a.digest() != c.digest()
    assert c.steps[1].max_seconds == 10


def test_budget_override_reaches_every_calibrated_step():
    recipe = with_budget(load_recipe("prune-0.25+w8a8"), calibration_samples=3)
    assert [s.calibration.samples for s in recipe.steps] == [3, 3]


def test_recipe_yaml_round_trips(tmp_path: Path):
    recipe = load_recipe("prune-0.25+distill+w4a16").check(SMOLLM2)
    path = tmp_path / "r.yaml"
    path.write_text(recipe.to_yaml())
    again = load_recipe(str(path)).check(SMOLLM2)
    assert again.digest() == recipe.digest()


def test_list_names_every_default():
    names = named_recipes()
    for name in ("w8a8", "w4a16", "fp8", "sparse-2:4", "distill", "prune-<fraction>"):
        assert name in names


def test_sparse_step_fields():
    step = load_recipe("sparse-2:4").steps[0]
    assert isinstance(step, SparsifyStep)
    assert (step.method, step.mask_structure, step.sparsity) == ("sparsegpt", "2:4", 0.5)
