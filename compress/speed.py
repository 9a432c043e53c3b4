"""Serving speed in vLLM: start an engine process, talk OpenAI HTTP to it, stop it.

compress never imports vLLM (it lives in another environment, docs/toolchain.md); it runs
`<vllm python> -m vllm.entrypoints.openai.api_server` as a child process in its own process
group and measures over HTTP. Tokens/s counts generated tokens with `ignore_eos`, so every
request produces exactly `max_tokens` tokens; TTFT is the time to the first streamed token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from compress.errors import CompressError
from compress.vllm_command import cpu_dtype_flags, free_port, vllm_command, vllm_environment

PROMPT = (
    "The Python language reference describes the syntax and core semantics of the "
    "language. It is terse, but attempts to be exact and complete. Write a short essay "
    "about why a precise language definition matters for"
)


def default_vllm_python() -> str | None:
    """LEANSERVE_VLLM_PYTHON, else the project's .venv next to this package, if present."""
    env = os.environ.get("LEANSERVE_VLLM_PYTHON")
    if env:
        return env
    candidate = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "python"
    return str(candidate) if candidate.exists() else None


def _die_with_parent() -> None:
    """Linux: SIGTERM the engine when the build process dies, even by SIGKILL."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Engine:
    process: subprocess.Popen
    url: str
    name: str
    log_path: Path

    def first_error(self) -> str:
        """The root cause vLLM logged (its first RuntimeError/ValueError/... line)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        for line in text.splitlines():
            if re.search(r"\b\w+Error: ", line) and "ulimit" not in line:
                return line.split("] ", 1)[-1].strip()
        return self.log_tail(3)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start_engine(
    model_dir: Path,
    python: str,
    log_path: Path,
    name: str = "variant",
    max_model_len: int = 2048,
    kv_cache_gib: int = 1,
) -> Engine:
    port = free_port()
    config = json.loads((model_dir / "config.json").read_text())
    max_model_len = min(max_model_len, int(config.get("max_position_embeddings", max_model_len)))
    # The dtype the gateway's CPU engines use on this machine (float32 where bf16 is emulated).
    cmd = vllm_command(
        python, str(model_dir), name, port, max_model_len=max_model_len, enforce_eager=True,
        flags=cpu_dtype_flags(),
    )  # fmt: skip
    env = vllm_environment(os.environ, kv_cache_gib)
    # A card's speed figures are measured with this KV cache, whatever the environment says.
    env["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib)
    log = log_path.open("w")
    # Own process group: vLLM spawns an engine-core child that must die with it.
    process = subprocess.Popen(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    log.close()
    return Engine(process, f"http://127.0.0.1:{port}", name, log_path)


def wait_ready(engine: Engine, timeout_s: float = 300) -> float:
    """Seconds until /health answers 200; raises with the log's tail if the engine dies."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if engine.process.poll() is not None:
            raise CompressError(
                f"vLLM exited with status {engine.process.returncode} while loading: "
                f"{engine.first_error()}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(engine.url + "/health", timeout=2).status_code == 200:
                return time.monotonic() - start
        time.sleep(1)
    raise CompressError(f"vLLM not ready after {timeout_s:.0f} s:\n" + engine.log_tail())


def stop_engine(engine: Engine, grace_s: float = 20) -> None:
    if engine.process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(engine.process.pid, signal.SIGTERM)
    try:
        engine.process.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(engine.process.pid, signal.SIGKILL)
        engine.process.wait()


@contextlib.contextmanager
def running_engine(model_dir: Path, python: str, log_path: Path, name: str = "variant"):
    engine = start_engine(model_dir, python, log_path, name)
    try:
        wait_ready(engine)
        yield engine
    finally:
        stop_engine(engine)


def complete(engine: Engine, prompt: str, max_tokens: int = 16) -> str:
    response = httpx.post(
        engine.url + "/v1/completions",
        json={"model": engine.name, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0},
        timeout=120,
    )
    response.raise_for_status()
    return response.json()["choices"][0]["text"]


async def _one_stream(client: httpx.AsyncClient, engine: Engine, max_tokens: int) -> dict:
    body = {
        "model": engine.name,
        "prompt": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    start = time.perf_counter()
    first = None
    async with client.stream("POST", engine.url + "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:  # vLLM reports a failure mid-stream as one error chunk
                raise CompressError(f"vLLM stream error: {chunk['error']}")
            if first is None and chunk["choices"] and chunk["choices"][0].get("text"):
                first = time.perf_counter() - start
    return {
        "ttft_s": first if first is not None else float("nan"),
        "e2e_s": time.perf_counter() - start,
    }


async def _load(engine: Engine, concurrency: int, max_tokens: int, rounds: int) -> dict:
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        await _one_stream(client, engine, 8)  # warm-up
        ttfts: list[float] = []
        start = time.perf_counter()
        for _ in range(rounds):
            results = await asyncio.gather(
                *(_one_stream(client, engine, max_tokens) for _ in range(concurrency))
            )
            ttfts += [r["ttft_s"] for r in results]
        wall = time.perf_counter() - start
    ttfts.sort()
    return {
        "concurrency": concurrency,
        "requests": concurrency * rounds,
        "tokens_per_s": round(concurrency * rounds * max_tokens / wall, 2),
        "ttft_s_mean": round(sum(ttfts) / len(ttfts), 4),
        "ttft_s_p50": round(ttfts[len(ttfts) // 2], 4),
    }


def benchmark(engine: Engine, max_tokens: int = 128, streams: tuple[int, ...] = (1, 32)) -> dict:
    """Generated tokens/s and TTFT at each concurrency (one round of 32, three of 1)."""
    out = {}
    for concurrency in streams:
        rounds = 3 if concurrency == 1 else 1
        out[f"streams_{concurrency}"] = asyncio.run(_load(engine, concurrency, max_tokens, rounds))
    return out


def measure(model_dir: Path, python: str, log_dir: Path, name: str, max_tokens: int = 128) -> dict:
    """Start an engine on `model_dir`, check it generates, benchmark it, stop it."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with running_engine(model_dir, python, log_dir / f"vllm-{name}.log", name) as engine:
        startup = time.monotonic()
        try:
            sample = complete(engine, "The capital of France is", 8)
            result = benchmark(engine, max_tokens)
        except httpx.HTTPError as exc:
            raise CompressError(f"{exc}; engine says: {engine.first_error()}") from exc
        result["sample_completion"] = sample
        result["benchmark_s"] = round(time.monotonic() - startup, 1)
        return result
