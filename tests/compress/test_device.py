"""compress computes on the device it is given: CUDA where torch sees a GPU, else the CPU.

This machine has no GPU: "CUDA" here is a TEST DOUBLE. Moves to "cuda" are recorded and then
skipped (the tensors stay on the CPU), so the tests check which device is chosen and passed
down, not CUDA itself (bench/gpu_check.py runs distill and evaluate on a real GPU). torch itself
is never told it has a GPU while a model is loaded or trained: transformers and accelerate then
take GPU paths whose state outlives the test (later tests in the same process saw NaN weights);
only compress's own choice (`device.pick_device`) is faked for that.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from compress import chat_agreement, checkpoint, device, distill, evaluate, prune, quantize
from compress.context import BuildContext
from compress.errors import CompressError
from compress.progress import Progress
from compress.recipes import DistillStep, QuantizeStep
from compress.texts import CALIBRATION_TEXT, HELDOUT_TEXT, read_text

from .helpers import build


def _is_cuda(target) -> bool:
    return isinstance(target, str | torch.device) and torch.device(target).type == "cuda"


@pytest.fixture
def fake_cuda(monkeypatch) -> list[str]:
    """Moves to "cuda" are recorded and skipped; compress's own device choice says "cuda"."""
    moved: list[str] = []
    for module in (device, distill, evaluate):  # the steps imported the name itself
        monkeypatch.setattr(module, "pick_device", lambda: "cuda")
    module_to, tensor_to, tensor = torch.nn.Module.to, torch.Tensor.to, torch.tensor

    def to_module(self, *args, **kwargs):
        if any(_is_cuda(a) for a in (*args, kwargs.get("device"))):
            moved.append(type(self).__name__)
            return self
        return module_to(self, *args, **kwargs)

    def to_tensor(self, *args, **kwargs):
        if any(_is_cuda(a) for a in (*args, kwargs.get("device"))):
            moved.append("Tensor")
            return self
        return tensor_to(self, *args, **kwargs)

    def new_tensor(*args, **kwargs):
        if _is_cuda(kwargs.get("device")):
            moved.append("tensor(device=cuda)")
            kwargs.pop("device")
        return tensor(*args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", to_module)
    monkeypatch.setattr(torch.Tensor, "to", to_tensor)
    monkeypatch.setattr(torch, "tensor", new_tensor)
    return moved


class Autocasts(list):
    """Device types of the autocasts entered, and in .enabled whether each was on."""

    def __init__(self):
        super().__init__()
        self.enabled: list[bool] = []


@pytest.fixture
def autocasts(monkeypatch) -> Autocasts:
    """The device_type of every torch.autocast (entered as a no-op)."""
    seen = Autocasts()

    def record(device_type, *args, **kwargs):
        seen.append(device_type)
        seen.enabled.append(kwargs.get("enabled", True))
        return contextlib.nullcontext()

    monkeypatch.setattr(torch, "autocast", record)
    return seen


def test_pick_device_follows_what_torch_sees(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device.pick_device() == "cpu" and device.resolve("auto") == "cpu"
    with pytest.raises(CompressError, match="--device cuda, but torch sees no CUDA GPU"):
        device.resolve("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device.pick_device() == "cuda" and device.resolve(None) == "cuda"
    assert device.resolve("cpu") == "cpu"
    assert device.autocast_type("cuda:1") == "cuda"


def _student_and_ctx(tiny_base):
    student = prune.drop_layers(checkpoint.load_model(tiny_base), [1])
    ctx = BuildContext(tiny_base, CALIBRATION_TEXT, Progress(bars=False))
    ctx.progress.stage("distill")
    return student, checkpoint.load_tokenizer(tiny_base), ctx


def test_distill_trains_on_the_gpu_it_finds(tiny_base, fake_cuda, autocasts):
    student, tokenizer, ctx = _student_and_ctx(tiny_base)
    step = DistillStep(max_seconds=600, max_tokens=64 * 8 * 2, seq_len=64)
    distill.apply(step, student, tokenizer, ctx)
    assert ctx.notes["distill"]["device"] == "cuda" and ctx.notes["distill"]["steps"] == 2
    assert autocasts == ["cuda", "cuda"]  # autocast's device type follows the device
    # The teacher and the student go to the GPU, and so does every batch.
    assert fake_cuda.count("LlamaForCausalLM") == 2 and fake_cuda.count("Tensor") == 2


def test_distill_on_the_device_it_is_given(tiny_base, fake_cuda, autocasts):
    student, tokenizer, ctx = _student_and_ctx(tiny_base)
    step = DistillStep(max_seconds=600, max_tokens=64 * 8, seq_len=64)
    distill.apply(step, student, tokenizer, ctx, device="cpu")
    assert autocasts == ["cpu"] and fake_cuda == []
    assert ctx.notes["distill"]["device"] == "cpu"


@pytest.mark.parametrize("native", [True, False])
def test_distill_autocasts_to_bf16_only_where_the_hardware_computes_it(
    tiny_base, autocasts, monkeypatch, native
):
    # Emulated bf16 (an AVX2-only CPU) is ~10x slower than float32, so it must stay off there.
    monkeypatch.setattr(distill, "bf16_native", lambda device: native)
    student, tokenizer, ctx = _student_and_ctx(tiny_base)
    step = DistillStep(max_seconds=600, max_tokens=64 * 8, seq_len=64)
    distill.apply(step, student, tokenizer, ctx, device="cpu")
    assert autocasts == ["cpu"] and autocasts.enabled == [native]


def test_bf16_native_asks_the_hardware(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device.bf16_native("cuda") is False  # no GPU: no bf16 there either
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert device.bf16_native("cuda:1") is True
    assert device.bf16_native("cpu") is bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def test_evaluate_on_the_gpu_it_finds_or_the_device_it_is_given(tiny_base, fake_cuda):
    model, base = checkpoint.load_model(tiny_base), checkpoint.load_model(tiny_base)
    tokenizer, text = checkpoint.load_tokenizer(tiny_base), read_text(HELDOUT_TEXT)
    q = evaluate.evaluate(model, base, tokenizer, text, seq_len=32, max_windows=2, max_passages=1)
    assert q.kl_to_base == pytest.approx(0.0, abs=1e-5)
    # Both models, then each window's inputs and targets, are made on the GPU.
    assert fake_cuda.count("LlamaForCausalLM") == 2 and fake_cuda.count("tensor(device=cuda)") == 4
    fake_cuda.clear()
    evaluate.evaluate(model, base, tokenizer, text, seq_len=32, max_windows=2, max_passages=1,
                      device="cpu")  # fmt: skip
    assert fake_cuda == []


def test_a_cpu_quantization_refuses_a_gpu_llm_compressor_would_use(tiny_base, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # no model is loaded here
    ctx = BuildContext(tiny_base, CALIBRATION_TEXT, Progress(bars=False), device="cpu")
    with pytest.raises(CompressError, match="torch sees a GPU and llm-compressor would use it"):
        quantize.apply(QuantizeStep(scheme="w8a8"), None, None, ctx)


def test_a_build_passes_the_device_it_picks_to_its_steps(tiny_base, store, monkeypatch):
    seen: dict[str, list] = {"distill": [], "evaluate": [], "chat": []}
    real_distill, real_evaluate = distill.apply, evaluate.evaluate
    real_chat = chat_agreement.measure

    def spy_distill(step, model, tokenizer, ctx, device=None):
        seen["distill"].append(ctx.device)
        return real_distill(step, model, tokenizer, ctx, device="cpu")

    def spy_evaluate(*args, **kwargs):
        seen["evaluate"].append(kwargs["device"])
        return real_evaluate(*args, **{**kwargs, "device": "cpu"})

    def spy_chat(*args):  # measure(variant, base, tokenizer, options, cache, ref, progress, device)
        seen["chat"].append(args[7])
        return real_chat(*args[:7], "cpu")

    monkeypatch.setattr(distill, "apply", spy_distill)
    monkeypatch.setattr(evaluate, "evaluate", spy_evaluate)
    monkeypatch.setattr(chat_agreement, "measure", spy_chat)
    # Only compress's own choice sees "CUDA": a real build (loading, saving) under a torch that
    # claims a GPU it does not have takes GPU paths in transformers and accelerate (NaN weights
    # were seen), and their cached state outlives the test.
    monkeypatch.setattr(device, "pick_device", lambda: "cuda")
    build(tiny_base, "distill", store, distill_seconds=1.0)
    assert seen == {"distill": ["cuda"], "evaluate": ["cuda"], "chat": ["cuda"]}

    monkeypatch.setattr(device, "pick_device", lambda: "cpu")
    seen = {"distill": [], "evaluate": [], "chat": []}
    build(tiny_base, "prune-0.25+distill", store, distill_seconds=1.0)
    assert seen == {"distill": ["cpu"], "evaluate": ["cpu"], "chat": ["cpu"]}
