from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from compress import checkpoint, quantize
from compress import device as device_mod
from compress.recipes import QuantizeStep

from .helpers import build


def test_w4a16_config_groups_carry_the_group_size_and_mixed_bits():
    step = QuantizeStep(scheme="w4a16", group_size=32, int8_targets=["re:.*down_proj"])
    groups = quantize.config_groups(step)
    assert groups["int4"]["weights"] == {
        "num_bits": 4,
        "type": "int",
        "symmetric": True,
        "strategy": "group",
        "group_size": 32,
    }
    assert groups["int8"]["targets"] == ["re:.*down_proj"]
    assert groups["int8"]["weights"]["strategy"] == "channel"


def test_modifiers_follow_the_step():
    names = [
        type(m).__name__
        for m in quantize.modifiers(QuantizeStep(scheme="w8a8", smoothing_strength=0.8))
    ]
    assert names == ["SmoothQuantModifier", "GPTQModifier"]
    names = [
        type(m).__name__
        for m in quantize.modifiers(QuantizeStep(scheme="fp8_dynamic", algorithm="rtn"))
    ]
    assert names == ["QuantizationModifier"]
    awq = quantize.modifiers(QuantizeStep(scheme="w4a16", group_size=32, awq=True))
    assert [type(m).__name__ for m in awq] == ["AWQModifier", "GPTQModifier"]


@pytest.mark.parametrize(
    ("recipe", "fmt", "weight_bits"),
    [
        ("w8a8", "int-quantized", 8),
        ("w4a16", "pack-quantized", 4),
        ("fp8", "float-quantized", 8),
    ],
)
def test_quantized_builds_are_compressed_tensors_checkpoints(
    tiny_base, store, recipe, fmt, weight_bits
):
    card, path, _ = build(tiny_base, recipe, store)
    qc = json.loads((path / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors"
    assert qc["format"] == fmt
    group = next(iter(qc["config_groups"].values()))
    assert group["weights"]["num_bits"] == weight_bits
    assert "lm_head" in qc["ignore"]
    assert card["size"]["size_ratio"] < 0.9
    # It loads and generates in transformers.
    model = checkpoint.load_model(path)
    tokenizer = checkpoint.load_tokenizer(path)
    ids = tokenizer("The if statement", return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 4
    assert torch.isfinite(model(ids).logits).all()
    assert card["quality"]["kl_to_base"] < 0.5


def test_w4a16_group_size_is_chosen_for_the_model(tiny_base, store, tmp_path):
    recipe = tmp_path / "w4a16-auto.yaml"
    recipe.write_text("steps:\n  - kind: quantize\n    scheme: w4a16\n    group_size: null\n")
    card, path, _ = build(tiny_base, str(recipe), store)
    assert card["variant"].endswith("w4a16-g64")  # 64 divides the tiny model's widths


def test_quantizing_a_stored_variant_against_a_reference(tiny_base, store):
    """The benchmark's hybrid path: quantize a stored pruned variant, judge it against the base."""
    _, pruned, _ = build(tiny_base, "prune-0.25", store)
    card, path, _ = build(pruned, "w8a8", store, reference=tiny_base)
    assert card["variant"] == "tiny-llama-prune0.25-w8a8"
    assert card["base"]["path"] == str(tiny_base.resolve())
    assert card["built_from"]["path"] == str(pruned.resolve())
    assert card["size"]["parameter_ratio"] < 1
    assert json.loads((path / "config.json").read_text())["num_hidden_layers"] == 3


@pytest.mark.parametrize("recipe", ["w8a8", "w4a16", "fp8"])
def test_where_bf16_is_emulated_quantize_calibrates_in_float32_and_saves_bf16(
    tiny_base, tmp_path, monkeypatch, recipe
):
    """An AVX2-only CPU emulates bf16: calibration runs in float32 there, and the checkpoint is
    still the one a bf16 build writes (same format, scales in bf16) with about the same quality."""
    native, native_path, _ = build(tiny_base, recipe, tmp_path / "native")
    seen: list[torch.dtype] = []
    apply = quantize.apply

    def recording_apply(step, model, *args, **kwargs):
        seen.append(next(model.parameters()).dtype)
        return apply(step, model, *args, **kwargs)

    monkeypatch.setattr(device_mod, "bf16_native", lambda device: False)
    monkeypatch.setattr(quantize, "apply", recording_apply)
    card, path, _ = build(tiny_base, recipe, tmp_path / "emulated")
    assert seen == [torch.float32]
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        scales = {f.get_tensor(k).dtype for k in f.keys() if k.endswith("weight_scale")}  # noqa: SIM118
    assert scales == {torch.bfloat16}

    def config(folder):
        return json.loads((folder / "config.json").read_text())["quantization_config"]

    assert config(path)["format"] == config(native_path)["format"]
    assert abs(card["quality"]["kl_to_base"] - native["quality"]["kl_to_base"]) < 0.05
