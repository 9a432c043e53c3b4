"""A second model family: Gemma 3 (text only) on a tiny random model of its architecture.

What differs from Llama and must hold: layer pruning keeps `layer_types` (sliding or full
attention per layer) in step with the layers kept; SmoothQuant smooths the norm that really
feeds each Linear (Gemma 3 has four norms per layer); every window starts with <bos>, which
Gemma's tokenizer adds and the model needs.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from compress import checkpoint, distill, prune, quantize, texts
from compress.recipes import DistillStep, QuantizeStep

from .conftest import make_tiny_llama
from .helpers import build

SLIDING_WINDOW = 16  # shorter than the test inputs, so sliding and full layers differ


def make_tiny_gemma3(directory: Path, layers: int = 6) -> Path:
    """A random Gemma3ForCausalLM (five sliding layers, then a full one, as Gemma 3's pattern),
    with the tiny Llama's BPE tokenizer set to start every text with <bos>, as Gemma's does."""
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    llama = make_tiny_llama(directory.parent / "tokenizer-source")
    tokenizer = AutoTokenizer.from_pretrained(llama)
    tokenizer.add_bos_token = True
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=SLIDING_WINDOW,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    model = Gemma3ForCausalLM(config)
    with torch.no_grad():  # random norms: Gemma's offset norms start at 0 (a scale of 1)
        for name, param in model.named_parameters():
            if "norm" in name:
                param.normal_(0, 0.5)
    model.to(torch.bfloat16).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_gemma(tmp_path_factory) -> Path:
    return make_tiny_gemma3(tmp_path_factory.mktemp("gemma") / "tiny-gemma3")


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, use_cache=False).logits.float()


def test_gemma3_is_a_supported_architecture(tiny_gemma):
    shape = checkpoint.model_shape(tiny_gemma)
    assert shape.architecture == "Gemma3ForCausalLM"
    assert shape.attention_width == 64 and shape.num_layers == 6


def test_windows_start_with_bos_where_the_tokenizer_adds_it(tiny_gemma, tiny_base):
    gemma_tok = checkpoint.load_tokenizer(tiny_gemma)
    chosen = texts.calibration_windows(gemma_tok, texts.CALIBRATION_TEXT, 3, 32)
    assert [(len(w), w[0]) for w in chosen] == [(32, gemma_tok.bos_token_id)] * 3
    assert gemma_tok.bos_token_id not in chosen[0][1:]
    # A tokenizer that adds no BOS (the Llama fixture, SmolLM2) gets its windows as before.
    llama_tok = checkpoint.load_tokenizer(tiny_base)
    ids = texts.token_ids(llama_tok, texts.read_text(texts.CALIBRATION_TEXT))
    assert texts.bos_prefix(llama_tok) == []
    assert texts.calibration_windows(llama_tok, texts.CALIBRATION_TEXT, 3, 32) == texts.windows(
        ids, 32, 3, 0
    )


def test_drop_layers_keeps_each_kept_layers_attention_type(tiny_gemma, tmp_path):
    model = checkpoint.load_model(tiny_gemma)
    types = list(model.config.layer_types)
    assert types == ["sliding_attention"] * 5 + ["full_attention"]
    prune.drop_layers(model, [1, 5])
    assert model.config.layer_types == [types[i] for i in (0, 2, 3, 4)]
    assert model.config.num_hidden_layers == 4
    ids = torch.randint(3, 500, (1, 3 * SLIDING_WINDOW))
    pruned = logits(model, ids)
    out = model.generate(ids[:, :8], max_new_tokens=4, do_sample=False)  # the KV cache path
    assert out.shape == (1, 12)
    model.save_pretrained(tmp_path / "pruned")
    saved = json.loads((tmp_path / "pruned" / "config.json").read_text())
    assert len(saved["layer_types"]) == saved["num_hidden_layers"] == 4
    again = checkpoint.load_model(tmp_path / "pruned")
    assert [layer.self_attn.is_sliding for layer in again.model.layers] == [True] * 4
    torch.testing.assert_close(logits(again, ids), pruned)


def smoothed(model, smoothquant, tokenizer) -> torch.nn.Module:
    from datasets import Dataset
    from llmcompressor import oneshot

    windows = texts.calibration_windows(tokenizer, texts.CALIBRATION_TEXT, 4, 32)
    data = Dataset.from_dict({"input_ids": windows, "attention_mask": [[1] * 32] * 4})
    return oneshot(model=model, recipe=[smoothquant], dataset=data, max_seq_length=32)


def test_smoothquant_on_gemma3_smooths_the_norms_that_feed_each_linear(tiny_gemma):
    from llmcompressor.modifiers.transform import SmoothQuantModifier

    tokenizer = checkpoint.load_tokenizer(tiny_gemma)
    base = checkpoint.load_model(tiny_gemma)
    ids = torch.tensor(texts.calibration_windows(tokenizer, texts.CALIBRATION_TEXT, 2, 48))
    reference = logits(base, ids)
    step = QuantizeStep(scheme="w8a8", smoothing_strength=0.8)
    ours = quantize.modifiers(step, "Gemma3ForCausalLM")[0]
    assert isinstance(ours, SmoothQuantModifier)
    # Smoothing alone (no quantization) must not change what the model computes.
    after = logits(smoothed(copy.deepcopy(base), ours, tokenizer), ids)
    torch.testing.assert_close(after, reference, atol=1e-3, rtol=1e-3)
    # llm-compressor 0.14's own pairs for Gemma 3 do change it (why the pairs are ours).
    theirs = SmoothQuantModifier(smoothing_strength=0.8)
    wrong = logits(smoothed(copy.deepcopy(base), theirs, tokenizer), ids)
    assert (wrong - reference).abs().max() > 0.1 * reference.abs().max()


def test_smoothquant_pairs_stay_llm_compressors_for_llama():
    step = QuantizeStep(scheme="w8a8", smoothing_strength=0.8)
    assert quantize.modifiers(step, "LlamaForCausalLM")[0].mappings is None


def test_distill_runs_gemmas_vocabulary_in_parts():
    assert distill.micro_batch_size(8, 256, 49_152) == 8  # SmolLM2: the whole batch at once
    assert distill.micro_batch_size(8, 256, 262_144) == 2  # Gemma 3: 537M logits otherwise


def test_gradients_in_parts_are_the_whole_batchs(tiny_gemma):
    teacher = checkpoint.load_model(tiny_gemma)
    student = prune.drop_layers(checkpoint.load_model(tiny_gemma), [2])
    tokenizer = checkpoint.load_tokenizer(tiny_gemma)
    batch = torch.tensor(texts.calibration_windows(tokenizer, texts.CALIBRATION_TEXT, 4, 32))
    step = DistillStep(hard_label_weight=1.0)
    grads = []
    for micro_batch in (4, 1):
        student.zero_grad()
        loss = distill.accumulate_gradients(student, teacher, batch, step, micro_batch, "cpu")
        grads.append((loss, [p.grad.clone() for p in student.parameters()]))
    (whole, whole_grads), (parts, part_grads) = grads
    assert parts == pytest.approx(whole, rel=1e-2)
    for a, b in zip(whole_grads, part_grads, strict=True):
        torch.testing.assert_close(b, a, rtol=5e-2, atol=1e-3)


@pytest.mark.parametrize("recipe", ["w8a8", "w4a16", "prune-0.34+distill", "sparse-2:4"])
def test_named_recipes_build_for_gemma3(tiny_gemma, store, recipe):
    card, path, _ = build(tiny_gemma, recipe, store)
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["Gemma3ForCausalLM"]
    assert len(config["layer_types"]) == config["num_hidden_layers"]
    assert config["num_hidden_layers"] == (4 if recipe.startswith("prune") else 6)
    quality = card["quality"]
    assert 0 <= quality["top1_agreement"] <= 1 and quality["perplexity"] > 1
    model = checkpoint.load_model(path)  # loads back in transformers as it is
    assert type(model).__name__ == "Gemma3ForCausalLM"
