"""How a vLLM OpenAI server is started: its command line, its environment, a free port.

The one place both sides build them: the gateway's engines (server/backends/engine_process.py)
and compress's speed runs (compress/speed.py). Standard library only, so the gateway imports it
as it imports compress.schema, without anything of compress's heavy dependencies.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from pathlib import Path

API_SERVER = "vllm.entrypoints.openai.api_server"

# /proc/cpuinfo flags (x86) or Features (Arm) that mean bf16 arithmetic in hardware.
BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


def _cpu_flags(cpuinfo: Path) -> tuple[str, set[str]] | None:
    """("flags", x86 flags) or ("Features", Arm features) of the first CPU; None if unknown."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return key.strip(), set(value.split())
    return None


def detect_cpu_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPUs have bf16 instructions; True where cpuinfo cannot be read (the default
    then stays vLLM's own)."""
    found = _cpu_flags(cpuinfo)
    return True if found is None else bool(BF16_FLAGS & found[1])


def detect_cpu_avx512(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether x86 CPUs have AVX-512 (vLLM CPU picks its kernel library by it); True on other
    architectures and where cpuinfo cannot be read."""
    found = _cpu_flags(cpuinfo)
    return True if found is None or found[0] != "flags" else "avx512f" in found[1]


def cpu_dtype_flags(bf16: bool | None = None) -> list[str]:
    """--dtype float32 for a CPU engine on CPUs without bf16 instructions (vLLM CPU emulates
    bf16 there: ~5x slower, BENCHMARKS.md); nothing elsewhere (the checkpoint's dtype)."""
    return [] if (detect_cpu_bf16() if bf16 is None else bf16) else ["--dtype", "float32"]


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the OS picks it), for an engine or a test server."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def vllm_command(
    python: str,
    model: str,
    name: str,
    port: int,
    *,
    host: str = "127.0.0.1",
    max_model_len: int | None = None,
    enforce_eager: bool = False,
    trust_remote_code: bool = False,
    gpu_memory_utilization: float | None = None,
    flags: Sequence[str] = (),
) -> list[str]:
    """`<python> -m vllm.entrypoints.openai.api_server` serving `model` as `name`.

    `flags` go last, so they win over the ones above: a placement's flags, then the operator's
    extra arguments. The API key never goes here (every user of the host can read a command
    line): it travels as VLLM_API_KEY in the environment.
    """
    cmd = [python, "-m", API_SERVER, "--model", model, "--served-model-name", name]
    cmd += ["--host", host, "--port", str(port)]
    if max_model_len:
        cmd += ["--max-model-len", str(max_model_len)]
    if enforce_eager:
        cmd.append("--enforce-eager")
    if trust_remote_code:
        cmd.append("--trust-remote-code")
    if gpu_memory_utilization:
        cmd += ["--gpu-memory-utilization", str(gpu_memory_utilization)]
    return cmd + list(flags)


def vllm_environment(
    inherited: Mapping[str, str], kv_cache_gib: float, offline: bool = True
) -> dict[str, str]:
    """`inherited` plus what every engine needs: a KV cache size for CPU engines (an inherited
    VLLM_CPU_KVCACHE_SPACE wins), no usage reports, and, for local checkpoints, no hub."""
    env = dict(inherited)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{kv_cache_gib:g}")
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
        env["TRANSFORMERS_OFFLINE"] = "1"
    return env
