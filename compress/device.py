"""Which device a build computes on: the one it is given, else CUDA where torch sees a GPU.

The gateway's placement plan passes `--device` (and CUDA_VISIBLE_DEVICES for the GPU it chose);
run by hand, a build picks for itself. Steps take the device as a parameter and never name one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for annotations only: the functions import torch when called
    import torch

DEVICES = ("auto", "cpu", "cuda")


def pick_device() -> str:
    """The device to compute on: "cuda" when torch sees a CUDA GPU, else "cpu"."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve(device: str | None) -> str:
    """`auto`/None -> pick_device(); `cuda` without a GPU is an error (named, not a crash)."""
    from compress.errors import CompressError

    if device in (None, "auto"):
        return pick_device()
    if device not in DEVICES:
        raise CompressError(f"unknown device {device!r}: use one of {', '.join(DEVICES)}")
    if device == "cuda" and pick_device() != "cuda":
        raise CompressError("--device cuda, but torch sees no CUDA GPU")
    return device


def autocast_type(device: str) -> str:
    """torch.autocast's device_type for a device string ("cuda:1" -> "cuda")."""
    return device.split(":")[0]


def bf16_native(device: str) -> bool:
    """Whether the device computes bfloat16 in hardware. Autocasting to bf16 where it is only
    emulated is far slower than float32: one distillation step of the default model took 383 s
    under bf16 autocast on an AVX2-only CPU (AMD EPYC, no AVX512-BF16)."""
    import torch

    kind = autocast_type(device)
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if kind == "cpu":
        # oneDNN's check: AVX512-BF16 or AMX on x86, BF16 on Arm.
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def compute_dtype(device: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype to run a calibration pass in for a checkpoint stored in `dtype`: that dtype
    where the device computes it natively, float32 where bf16 would only be emulated. On an
    AVX2-only CPU a w4a16 build (AWQ's grid search) in emulated bf16 had done 2 of 30 layers
    after 8 minutes; the result is cast back to `dtype` before it is saved."""
    import torch

    if dtype == torch.bfloat16 and not bf16_native(device):
        return torch.float32
    return dtype
