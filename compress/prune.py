"""Pruning: whole decoder layers (block influence / angular distance), or weights (Wanda, 2:4).

Layer pruning scores layers on calibration text, then removes them from the module list, so
the saved checkpoint is an ordinary, smaller model of the same architecture: vLLM runs it
with fewer layers and gains speed. Weight pruning keeps shapes (zeros in dense tensors) and
gains no speed on vLLM today.

Scores (the math is the three pure functions at the top):
- block influence (ShortGPT, Men et al. 2024): BI_i = 1 - E[cos(x_i, x_{i+1})], the change a
  layer makes to the residual stream; drop the n layers with the lowest BI.
- angular distance (Gromov et al. 2024): d(l, n) = E[arccos(cos(x_l, x_{l+n}))] / pi; drop the
  contiguous block l..l+n-1 with the smallest distance. Averaged over every token here (the
  paper uses the last token) because a few calibration windows are then enough.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from compress import texts

if TYPE_CHECKING:
    from compress.context import BuildContext
    from compress.recipes import LayerPruneStep, SparsifyStep


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-token cosine similarity of two [..., hidden] tensors, in float32."""
    return nn.functional.cosine_similarity(a.float(), b.float(), dim=-1, eps=1e-8)


def block_influence_drop(bi: list[float], n: int) -> list[int]:
    """Indices of the n layers with the least influence, ascending."""
    return sorted(sorted(range(len(bi)), key=lambda i: bi[i])[:n])


def angular_drop(distance: list[float], n: int) -> list[int]:
    """The contiguous block of n layers starting where the angular distance is smallest."""
    start = min(range(len(distance)), key=lambda i: distance[i])
    return list(range(start, start + n))


@torch.no_grad()
def layer_scores(model, windows: list[list[int]], n: int, progress=None) -> dict[str, list[float]]:
    """Block influence of every layer and angular distance of every n-layer block."""
    layers = model.model.layers
    num = len(layers)
    states: list[torch.Tensor] = []

    def keep(_module, _inputs, output):
        states.append(output[0] if isinstance(output, tuple) else output)

    hooks = [model.model.embed_tokens.register_forward_hook(keep)]
    hooks += [layer.register_forward_hook(keep) for layer in layers]
    bi_sum = torch.zeros(num, dtype=torch.float64)
    ang_sum = torch.zeros(num - n + 1, dtype=torch.float64)
    tokens = 0
    try:
        for k, window in enumerate(windows):
            states.clear()
            model(torch.tensor([window]), use_cache=False)
            for i in range(num):
                bi_sum[i] += (1 - cosine(states[i], states[i + 1])).sum().double()
            for start in range(num - n + 1):
                cos = cosine(states[start], states[start + n]).clamp(-1, 1)
                ang_sum[start] += (torch.arccos(cos) / math.pi).sum().double()
            tokens += len(window)
            if progress is not None:
                progress.update(k + 1)
    finally:
        for h in hooks:
            h.remove()
        states.clear()
    return {
        "block_influence": (bi_sum / tokens).tolist(),
        "angular_distance": (ang_sum / tokens).tolist(),
    }


def drop_layers(model, drop: list[int]):
    """Remove decoder layers in place and renumber the rest so caches index correctly."""
    layers = model.model.layers
    kept = [layer for i, layer in enumerate(layers) if i not in set(drop)]
    model.model.layers = nn.ModuleList(kept)
    for new_index, layer in enumerate(kept):
        for module in (layer, getattr(layer, "self_attn", None)):
            if module is not None and hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    config = model.config
    if getattr(config, "layer_types", None):
        config.layer_types = [t for i, t in enumerate(config.layer_types) if i not in set(drop)]
    config.num_hidden_layers = len(kept)
    return model


def apply_layer_prune(step: LayerPruneStep, model, tokenizer, ctx: BuildContext):
    num = len(model.model.layers)
    n = step.layers_to_drop(num)
    cal = step.calibration
    windows = texts.calibration_windows(tokenizer, ctx.calibration_file, cal.samples, cal.seq_len)
    ctx.progress.set_total(len(windows))
    scores = layer_scores(model, windows, n, ctx.progress)
    if step.metric == "block_influence":
        drop = block_influence_drop(scores["block_influence"], n)
    else:
        drop = angular_drop(scores["angular_distance"], n)
    ctx.progress.log(f"prune: dropping layers {drop} of {num} ({step.metric})")
    ctx.notes["pruned_layers"] = drop
    ctx.notes["layer_scores"] = {k: [round(v, 5) for v in vs] for k, vs in scores.items()}
    return drop_layers(model, drop)


def apply_sparsify(step: SparsifyStep, model, tokenizer, ctx: BuildContext):
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier

    from compress.quantize import calibration_dataset

    cls = WandaPruningModifier if step.method == "wanda" else SparseGPTModifier
    modifier = cls(
        sparsity=step.sparsity,
        mask_structure=step.mask_structure,
        targets=["Linear"],
        ignore=list(step.ignore),
    )
    cal = step.calibration
    dataset = calibration_dataset(tokenizer, ctx, cal.samples, cal.seq_len)
    ctx.progress.log(f"sparsify: {step.tag()} with llm-compressor")
    with ctx.layer_progress(model):
        model = oneshot(
            model=model,
            recipe=[modifier],
            dataset=dataset,
            num_calibration_samples=len(dataset),
            max_seq_length=cal.seq_len,
            shuffle_calibration_samples=False,
        )
    ctx.notes["serving"] = (
        "weights are sparse but stored dense: vLLM has no sparse kernels for them today, "
        "so this variant runs at the base's speed"
    )
    return model


def weight_sparsity(model) -> float:
    """Fraction of exact zeros over the decoder's Linear weights."""
    zeros = total = 0
    for module in model.model.layers.modules():
        if isinstance(module, nn.Linear):
            zeros += int((module.weight == 0).sum())
            total += module.weight.numel()
    return zeros / total if total else 0.0
