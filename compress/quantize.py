"""Post-training quantization through llm-compressor's one-shot entrypoint.

A QuantizeStep becomes a list of llm-compressor modifiers; `oneshot` runs them over the
calibration windows on the in-memory model, which then saves as a compressed-tensors
checkpoint that vLLM loads (CPUInt8ScaledMM for w8a8, CPUWNA16 for w4a16 on CPU).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from compress import texts
from compress.device import pick_device

if TYPE_CHECKING:
    from compress.context import BuildContext
    from compress.recipes import QuantizeStep


def weight_args(bits: int, group_size: int | None, symmetric: bool) -> dict:
    args: dict[str, Any] = {"num_bits": bits, "type": "int", "symmetric": symmetric}
    if group_size:
        args.update(strategy="group", group_size=group_size)
    else:
        args.update(strategy="channel")
    return args


def config_groups(step: QuantizeStep) -> dict | None:
    """Explicit schemes where llm-compressor's presets do not fit (group size, mixed bits)."""
    if step.scheme != "w4a16":
        return None
    groups: dict[str, dict] = {}
    if step.int8_targets:
        # Mixed precision: the named Linears keep 8-bit per-channel weights; they are the
        # ones whose 4-bit error is largest (GPTQ reports it per module).
        groups["int8"] = {
            "targets": list(step.int8_targets),
            "weights": weight_args(8, None, True),
        }
    groups["int4"] = {
        "targets": ["Linear"],
        "weights": weight_args(4, step.group_size, step.symmetric),
    }
    return groups


# SmoothQuant's (balance layers, smooth layer) pairs where llm-compressor's own are wrong.
# llm-compressor 0.14 gives Gemma3ForCausalLM the Llama pairs, which smooth gate/up_proj
# against post_attention_layernorm; in Gemma 3 that norm scales the attention output on its
# way to the residual, and gate/up read pre_feedforward_layernorm. Smoothing the wrong norm
# changes what the model computes (on a random Gemma 3 the logits moved by more than their
# own size; with these pairs by 2e-6: tests/compress/test_second_family.py).
SMOOTHQUANT_MAPPINGS: dict[str, list] = {
    "Gemma3ForCausalLM": [
        [["re:.*q_proj$", "re:.*k_proj$", "re:.*v_proj$"], "re:.*input_layernorm$"],
        [["re:.*gate_proj$", "re:.*up_proj$"], "re:.*pre_feedforward_layernorm$"],
    ],
}


def modifiers(step: QuantizeStep, architecture: str | None = None) -> list:
    """llm-compressor modifiers for `step`; `architecture` (the model's class name) picks
    SmoothQuant pairs where llm-compressor's own are wrong (SMOOTHQUANT_MAPPINGS)."""
    from llmcompressor.modifiers.gptq import GPTQModifier
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform import AWQModifier, SmoothQuantModifier

    out: list = []
    if step.smoothing_strength is not None:
        pairs = SMOOTHQUANT_MAPPINGS.get(architecture or "")
        extra = {"mappings": pairs} if pairs else {}
        out.append(SmoothQuantModifier(smoothing_strength=step.smoothing_strength, **extra))
    if step.awq:
        out.append(AWQModifier())
    groups = config_groups(step)
    quant: dict[str, Any] = {"ignore": list(step.ignore)}
    if groups is not None:
        quant["config_groups"] = groups
    else:
        quant["targets"] = ["Linear"]
        quant["scheme"] = {"w8a8": "W8A8", "fp8_dynamic": "FP8_DYNAMIC"}[step.scheme]
    if step.algorithm == "gptq":
        gptq = GPTQModifier(**quant, dampening_frac=step.dampening_frac, actorder=step.actorder)
        out.append(gptq)
    else:
        out.append(QuantizationModifier(**quant))
    return out


def needs_calibration(step: QuantizeStep) -> bool:
    return step.algorithm == "gptq" or step.awq or step.smoothing_strength is not None


def calibration_dataset(tokenizer, ctx: BuildContext, samples: int, seq_len: int):
    from datasets import Dataset

    ids = texts.calibration_windows(tokenizer, ctx.calibration_file, samples, seq_len, ctx.seed)
    return Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(w) for w in ids]})


def apply(step: QuantizeStep, model, tokenizer, ctx: BuildContext, device: str | None = None):
    """Quantize with llm-compressor on `device` (default: the build's). The model stays in host
    memory: llm-compressor's sequential pipeline onloads one decoder layer at a time to the
    accelerator it sees, so models larger than one GPU quantize too. It computes on the GPU
    whenever torch sees one, so a CPU build must hide the GPUs (`compress build --device cpu`
    does, through CUDA_VISIBLE_DEVICES, before torch loads)."""
    import torch
    from llmcompressor import oneshot

    from compress.errors import CompressError

    device = device or ctx.device or pick_device()
    if device == "cpu" and torch.cuda.is_available():
        raise CompressError(
            "quantize on the CPU was asked for, but torch sees a GPU and llm-compressor would "
            "use it: run with --device cpu (or CUDA_VISIBLE_DEVICES=) so it sees none"
        )
    kwargs: dict[str, Any] = {}
    if needs_calibration(step):
        cal = step.calibration
        dataset = calibration_dataset(tokenizer, ctx, cal.samples, cal.seq_len)
        kwargs.update(
            dataset=dataset,
            num_calibration_samples=len(dataset),
            max_seq_length=cal.seq_len,
            shuffle_calibration_samples=False,
        )
    ctx.progress.log(f"quantize: {step.tag()} with llm-compressor ({step.algorithm}) on {device}")
    ctx.notes.setdefault("quantize_device", device)
    with ctx.layer_progress(model), _no_pinned_memory_without_accelerator():
        model = oneshot(model=model, recipe=modifiers(step, type(model).__name__), **kwargs)
    return model


@contextlib.contextmanager
def _no_pinned_memory_without_accelerator() -> Iterator[None]:
    """llm-compressor 0.14's AWQ pins its cached activations (for faster copies to a GPU)
    without checking that there is one; on a CPU-only machine torch then raises "Cannot access
    accelerator device". Pinning only speeds up host-to-device copies, so without an
    accelerator skipping it changes nothing else."""
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    if torch.accelerator.is_available():
        yield
        return
    original = IntermediatesCache.pin_memory
    IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None
    try:
        yield
    finally:
        IntermediatesCache.pin_memory = original
