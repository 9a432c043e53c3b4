"""Start a real `leanserve serve` (or `leanserve engine`) in a child process for end-to-end tests
and benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from compress.vllm_command import free_port
from server.metrics.engine_stats import parse

REPO = Path(__file__).resolve().parents[2]
# Engines started by tests and benches skip torch.compile: compiled engines (the default since
# plain vLLM compiles) start in ~60 s instead of ~20 s, for every test that starts one. A test
# or bench that measures the default passes {"LEANSERVE_ENGINE__ENFORCE_EAGER": "false"} in
# extra_env; the same variable in the calling environment wins too.
FAST_START = {"LEANSERVE_ENGINE__ENFORCE_EAGER": "true"}


@dataclass
class Gateway:
    proc: subprocess.Popen
    url: str
    log_path: Path

    def ready_info(self) -> dict:
        return httpx.get(f"{self.url}/ready", timeout=5).json()

    def engine(self, name: str | None = None) -> dict:
        engines = self.ready_info()["engines"]
        return engines[name] if name else next(iter(engines.values()))

    def wait_ready(self, timeout_s: float = 600) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited: {self.log_tail()}")
            try:
                response = httpx.get(f"{self.url}/ready", timeout=2)
                if response.status_code == 200:
                    return
                failed = {
                    k: v for k, v in response.json()["engines"].items() if v["state"] == "failed"
                }
                if failed:
                    raise RuntimeError(f"engines failed: {failed}")
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"gateway not ready in {timeout_s} s: {self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout_s: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_gateway(
    home: Path,
    log_path: Path,
    extra_env: dict[str, str] | None = None,
    args: list[str] | None = None,
) -> Gateway:
    port = free_port()
    env = {**FAST_START, **os.environ, "LEANSERVE_HOME": str(home), **(extra_env or {})}
    log_file = log_path.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "serve", "--port", str(port), *(args or [])],
        cwd=REPO,
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    return Gateway(proc, f"http://127.0.0.1:{port}", log_path)


def start_engine(
    home: Path, log_path: Path, recipe: str | None = None, extra_env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, str]:
    """`leanserve engine` on a free port (the engine pods' command); returns (process, URL)."""
    port = free_port()
    cmd = [sys.executable, "-m", "server", "engine", "--home", str(home), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), *(["--recipe", recipe] if recipe else [])]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
        env={**FAST_START, **os.environ, **(extra_env or {})},
    )
    return proc, f"http://127.0.0.1:{port}"


def wait_health(url: str, proc: subprocess.Popen, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"engine for {url} exited"
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(url)


def engine_headers(engine: dict) -> dict[str, str]:
    """What a direct call to a local engine (an entry of /ready's engines) must send: its key,
    which is in the engine process's environment (readable by the gateway's own user only)."""
    key = psutil.Process(engine["pid"]).environ().get("VLLM_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def engine_queues(engine_url: str) -> dict[str, float]:
    """Requests the vLLM engine itself is generating ("running") and holding ("waiting") now,
    from its own /metrics."""
    values = parse(httpx.get(f"{engine_url}/metrics", timeout=10).text)
    return {k: values.get(f"vllm:num_requests_{k}", 0.0) for k in ("running", "waiting")}


def engine_running(engine_url: str) -> float:
    return engine_queues(engine_url)["running"]


def wait_engine_running(engine_url: str, predicate, timeout_s: float) -> bool:
    """Poll engine_running until `predicate` holds; False if it did not within timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate(engine_running(engine_url)):
            return True
        # Not faster: each /metrics is a render in vLLM's API server, the process that also
        # relays the engine's outputs; polled every 50 ms it is a load of its own on a slow CPU.
        time.sleep(0.2)
    return False
