from __future__ import annotations

import json

import pytest
import torch

from compress import checkpoint, prune

from .helpers import build


def test_block_influence_drops_the_least_influential_layers():
    assert prune.block_influence_drop([0.5, 0.1, 0.3, 0.05, 0.9], 2) == [1, 3]


def test_angular_drops_the_most_similar_contiguous_block():
    # distance[l] compares layer l's input with layer l+n's: smallest at l=2.
    assert prune.angular_drop([0.4, 0.3, 0.1, 0.2], 3) == [2, 3, 4]


def test_cosine_is_per_token():
    a = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    b = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    assert prune.cosine(a, b).tolist() == [[1.0, 0.0]]


def test_layer_scores_see_an_identity_layer(tiny_base):
    model = checkpoint.load_model(tiny_base)
    # Make layer 2 a no-op on the residual stream: zero its output projections.
    layer = model.model.layers[2]
    torch.nn.init.zeros_(layer.self_attn.o_proj.weight)
    torch.nn.init.zeros_(layer.mlp.down_proj.weight)
    windows = [list(range(10, 74)), list(range(100, 164))]
    scores = prune.layer_scores(model, windows, n=1)
    bi = scores["block_influence"]
    assert len(bi) == 4 and bi[2] == pytest.approx(0.0, abs=1e-5)
    assert prune.block_influence_drop(bi, 1) == [2]
    assert prune.angular_drop(scores["angular_distance"], 1) == [2]


def test_drop_layers_gives_a_smaller_model_that_runs(tiny_base, tmp_path):
    model = checkpoint.load_model(tiny_base)
    prune.drop_layers(model, [0, 2])
    assert model.config.num_hidden_layers == 2
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]
    ids = torch.tensor([[5, 6, 7, 8]])
    out = model.generate(ids, max_new_tokens=3, do_sample=False)  # uses the KV cache
    assert out.shape == (1, 7)
    model.save_pretrained(tmp_path / "m")
    again = checkpoint.load_model(tmp_path / "m")
    assert len(again.model.layers) == 2


@pytest.mark.parametrize("recipe", ["prune-0.5", "prune-0.25-angular"])
def test_layer_prune_build(tiny_base, store, recipe):
    card, path, _ = build(tiny_base, recipe, store)
    config = json.loads((path / "config.json").read_text())
    assert config["num_hidden_layers"] == (2 if recipe == "prune-0.5" else 3)
    assert card["size"]["parameter_ratio"] < 1
    assert len(card["notes"]["pruned_layers"]) == 4 - config["num_hidden_layers"]


@pytest.mark.parametrize(("recipe", "structure"), [("wanda-0.5", "0:0"), ("sparse-2:4", "2:4")])
def test_weight_pruning_build(tiny_base, store, recipe, structure):
    card, path, _ = build(tiny_base, recipe, store)
    assert card["size"]["weight_sparsity"] == pytest.approx(0.5, abs=0.02)
    assert "no sparse kernels" in " ".join(card["serving"]["notes"])
    model = checkpoint.load_model(path)
    weight = model.model.layers[0].mlp.up_proj.weight
    if structure == "2:4":
        groups = (weight.reshape(-1, 4) != 0).sum(-1)
        assert int(groups.max()) <= 2
