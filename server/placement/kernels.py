"""Variants vLLM cannot run on this machine's CPUs, refused before they are built.

vLLM CPU 0.32 ships three kernel libraries and loads one by the CPU's instructions: `_C`
(AVX-512 with BF16), `_C_AVX512`, `_C_AVX2`. Only the first two hold `cpu_gemm_wna16`, the int4
weight kernel every w4a16 checkpoint needs; on an AVX2-only x86 CPU (e.g. AMD EPYC before Zen 4)
such an engine starts and then dies on its first request (docs/toolchain.md). w8a8 (oneDNN) and
unquantized models run everywhere.
"""

from __future__ import annotations

from server.placement.machine import Machine

INT4_SCHEMES = ("w4a16",)  # compress's int4-weight schemes (compress/recipes.py QuantizeStep)


def _int4_in_name(recipe: str) -> bool:
    # Named recipes and chains: "w4a16", "w4a16-g32", "prune-0.25+distill+w4a16".
    return any(token.startswith(INT4_SCHEMES) for token in recipe.split("+"))


def _int4_in_steps(steps: list[dict]) -> bool:
    return any(s.get("kind") == "quantize" and s.get("scheme") in INT4_SCHEMES for s in steps)


def cpu_refusal(
    machine: Machine, device: str, recipe: str, steps: list[dict] | None = None
) -> str | None:
    """Why an engine for `recipe` (its resolved card steps where built) cannot run here, or None."""
    if device != "cpu" or machine.cpu_avx512:
        return None
    if _int4_in_name(recipe) or _int4_in_steps(steps or []):
        return (
            f"{recipe}: vLLM CPU has no int4 (w4a16) kernel for this CPU: its AVX2 build lacks "
            "cpu_gemm_wna16, which needs AVX-512; serve w8a8 here, or w4a16 on an AVX-512 CPU "
            "or a GPU"
        )
    return None
