"""A vLLM engine as a supervised child process.

Why a child process and not vLLM's in-process AsyncLLM: a crash (or an OOM kill) of one engine
cannot take the gateway or the other variants with it; the supervisor sees the exit at once and
restarts it with backoff; and the exact same OpenAI HTTP protocol serves local and remote engines,
so the gateway has one backend client for both.

Each engine runs in its own session (process group), so stopping it also stops the engine-core
workers vLLM forks; PR_SET_PDEATHSIG makes the kernel end the API server if the gateway dies
without cleaning up, so no orphan holds memory or a port.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import secrets
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from compress.vllm_command import free_port, vllm_command, vllm_environment
from server.backends.engine_client import EngineClient, EngineError

if TYPE_CHECKING:
    from server.placement.plan import Placement

log = logging.getLogger("leanserve.engine")

PR_SET_PDEATHSIG = 1
HEALTH_TIMEOUT_S = 2.0


class EngineState(StrEnum):
    PREPARING = "preparing"  # converting or verifying the checkpoint
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass
class EngineConfig:
    name: str  # served model name, also the public variant name
    model: str  # checkpoint directory or hub id
    python: str
    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port
    kv_cache_gib: float = 1.0
    gpu_memory_utilization: float | None = None
    max_model_len: int | None = 2048
    enforce_eager: bool = False
    extra_args: list[str] = field(default_factory=list)
    log_path: Path | None = None
    start_timeout_s: float = 300
    offline: bool = True  # local checkpoints need no hub: never ask it
    trust_remote_code: bool = False
    cpu_bind: str | None = None  # VLLM_CPU_OMP_THREADS_BIND, e.g. "1": which cores (CPU engines)
    nice: int = 0  # nice value of the engine's compute processes (not its API server)
    cpus: tuple[int, ...] | None = None  # cores the whole process tree may run on; None: all
    # The placement plan's cores or GPUs for this engine: its env and flags are applied.
    placement: Placement | None = None
    compile_cache: Path | None = None  # VLLM_CACHE_ROOT: torch.compile artifacts survive restarts

    @classmethod
    def from_settings(cls, engine, name: str, model: str, **more) -> EngineConfig:
        """An engine of `model` served as `name`, as `engine` (settings.engine) says."""
        fields = {
            "python": engine.python,
            "host": engine.host,
            "kv_cache_gib": engine.kv_cache_gib,
            "gpu_memory_utilization": engine.gpu_memory_utilization,
            "max_model_len": engine.max_model_len,
            "enforce_eager": engine.enforce_eager,
            "extra_args": engine.extra_args,
            "trust_remote_code": engine.trust_remote_code,
            "start_timeout_s": engine.start_timeout_s,
            "nice": engine.nice,
            "cpus": tuple(engine.cpus) if engine.cpus else None,
        }
        placement = more.get("placement")
        if placement is not None:
            # The plan decides cores, priority and GPU memory (its flags carry the fraction).
            fields.update(
                cpus=placement.affinity or fields["cpus"],
                nice=placement.priority,
                gpu_memory_utilization=None,
            )
        return cls(name=name, model=model, **{**fields, **more})

    def command(self, port: int) -> list[str]:
        # The plan's flags before extra_args, which may override them.
        placed = list(self.placement.flags) if self.placement is not None else []
        return vllm_command(
            self.python,
            self.model,
            self.name,
            port,
            host=self.host,
            max_model_len=self.max_model_len,
            enforce_eager=self.enforce_eager,
            trust_remote_code=self.trust_remote_code,
            gpu_memory_utilization=self.gpu_memory_utilization,
            flags=[*placed, *self.extra_args],
        )

    def environment(self) -> dict[str, str]:
        env = vllm_environment(os.environ, self.kv_cache_gib, self.offline)
        if self.cpu_bind is not None:
            env["VLLM_CPU_OMP_THREADS_BIND"] = self.cpu_bind
        if self.compile_cache is not None:
            env.setdefault("VLLM_CACHE_ROOT", str(self.compile_cache))
            # vLLM 0.32's AOT-compiled artifacts fail to load back ("'function' object has no
            # attribute 'finalize_loading'") and it compiles again; its inductor cache loads
            # (docs/toolchain.md).
            env.setdefault("VLLM_USE_AOT_COMPILE", "0")
        if self.placement is not None:
            env.update(self.placement.env)  # the plan's cores and GPUs win over inherited ones
        return env


def compile_cache_dir(home: Path) -> Path:
    """Where engines keep vLLM's torch.compile artifacts (VLLM_CACHE_ROOT): in the store, so a
    restarted compiled engine skips most of its compilation."""
    return (home / "compile-cache").resolve()


# Loaded here, once: the child runs _child_setup's function between fork and exec, where loading
# a library (dlopen, malloc) can deadlock on a lock another gateway thread held at the fork.
try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:  # not glibc Linux: engines then outlive a killed gateway
    _LIBC = None


def _child_setup(cpus: tuple[int, ...] | None) -> Callable[[], None]:
    """What the engine's process runs before exec: die with the gateway; keep to `cpus`
    (vLLM's CPU backend binds its threads within the cores it is allowed)."""

    def setup() -> None:
        if _LIBC is not None:
            _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if cpus:
            os.sched_setaffinity(0, cpus)

    return setup


def lower_priority_of_workers(pid: int, nice: int) -> list[int]:
    """Give an engine's compute processes (vLLM's EngineCore and workers: the children of its
    API server) nice value `nice`; returns their pids. The API server itself keeps the normal
    priority: it is on every request's path (intake, first token, each streamed event), while
    the compute processes can wait a few milliseconds for the gateway and the API server."""
    children = psutil.Process(pid).children(recursive=True)
    for child in children:
        # Linux keeps a nice value per thread: set it on every thread (vLLM's OpenMP compute
        # threads exist by now); threads started later inherit it from their creator.
        with contextlib.suppress(psutil.Error):
            for thread in child.threads():
                with contextlib.suppress(OSError):
                    os.setpriority(os.PRIO_PROCESS, thread.id, nice)
    return [child.pid for child in children]


class EngineProcess:
    """Starts, watches and restarts one vLLM API server; `url` is where it answers."""

    restart_backoff_s = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
    healthy_after_s = 60.0  # a run this long resets the backoff

    def __init__(self, config: EngineConfig, prepare: Callable[[], Awaitable[str]] | None = None):
        """`prepare`, when given, runs once before the first start and returns the model path."""
        self.config = config
        self._prepare = prepare
        self.port = config.port or free_port(config.host)
        self.url = f"http://{config.host}:{self.port}"
        # Without a key anything on the host could call the engine around the gateway. Its own
        # per engine, for its lifetime (restarts included); the gateway sends it on every call.
        self.api_key = secrets.token_urlsafe(32)
        self.state = EngineState.STOPPED
        self.restarts = 0
        self.last_error: str | None = None
        self.started_at: float | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._ready = asyncio.Event()
        self.on_down: Callable[[], None] | None = None  # called when a running engine dies
        self.on_up: Callable[[], None] | None = None  # called each time it becomes ready

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.returncode is None else None

    @property
    def placement(self) -> Placement | None:
        return self.config.placement

    @property
    def ready(self) -> bool:
        return self.state == EngineState.READY

    def retry_after_s(self) -> int:
        """What a 503 tells the client: roughly when this engine should answer again."""
        if self.state == EngineState.RESTARTING:
            return 15
        return 5

    def environment(self) -> dict[str, str]:
        # vLLM reads VLLM_API_KEY as it reads --api-key; the flag would show the key in the
        # command line, which every user of the host can read (ps, /proc/<pid>/cmdline).
        return {**self.config.environment(), "VLLM_API_KEY": self.api_key}

    async def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._supervise(), name=f"engine-{self.config.name}")

    async def wait_ready(self, timeout: float | None = None) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout)
        return self.ready

    async def stop(self, grace_s: float = 10.0) -> None:
        self._stopping = True
        await self._terminate(grace_s)
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self.state = EngineState.STOPPED

    async def _supervise(self) -> None:
        if self._prepare is not None:
            self.state = EngineState.PREPARING
            try:
                self.config.model = await self._prepare()
            except Exception as exc:  # a model that cannot be prepared will not heal by retrying
                self.last_error = f"preparing the model failed: {exc}"
                self.state = EngineState.FAILED
                log.error("engine %s: %s", self.config.name, self.last_error)
                return
        attempt = 0
        while not self._stopping:
            self.state = EngineState.STARTING if attempt == 0 else EngineState.RESTARTING
            run_started = time.monotonic()
            try:
                await self._spawn()
                await self._wait_healthy()
                if self.config.nice:
                    lowered = lower_priority_of_workers(self._proc.pid, self.config.nice)
                    log.info(
                        "engine %s: processes %s at nice %d",
                        self.config.name,
                        lowered,
                        self.config.nice,
                    )
                self.state = EngineState.READY
                self._ready.set()
                if self.on_up is not None:
                    self.on_up()
                log.info("engine %s ready at %s (pid %s)", self.config.name, self.url, self.pid)
                code = await self._proc.wait()
                self.last_error = f"engine exited with code {code}"
            except Exception as exc:  # a failed start is retried like a crash
                self.last_error = str(exc)
            self._ready.clear()
            if self._stopping:
                break
            log.warning("engine %s down: %s", self.config.name, self.last_error)
            if self.on_down is not None:
                self.on_down()
            self.state = EngineState.RESTARTING
            await self._terminate(grace_s=2.0)
            if time.monotonic() - run_started > self.healthy_after_s:
                attempt = 0
            delay = self.restart_backoff_s[min(attempt, len(self.restart_backoff_s) - 1)]
            attempt += 1
            self.restarts += 1
            await asyncio.sleep(delay)

    async def _spawn(self) -> None:
        cfg = self.config
        log_file = None
        if cfg.log_path:
            cfg.log_path.parent.mkdir(parents=True, exist_ok=True)
            log_file = cfg.log_path.open("ab")
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *cfg.command(self.port),
                env=self.environment(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file or asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_child_setup(cfg.cpus),
            )
        finally:
            if log_file:
                log_file.close()
        self.started_at = time.monotonic()
        log.info("engine %s starting: pid %s, log %s", cfg.name, self._proc.pid, cfg.log_path)

    async def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.config.start_timeout_s
        async with EngineClient(self.url, HEALTH_TIMEOUT_S, self.api_key) as client:
            while time.monotonic() < deadline:
                if self._proc.returncode is not None:
                    raise RuntimeError(
                        f"engine exited with code {self._proc.returncode} while starting"
                    )
                with contextlib.suppress(EngineError):
                    if await client.health():
                        return
                await asyncio.sleep(0.5)
        raise TimeoutError(f"engine not healthy within {self.config.start_timeout_s:.0f} s")

    async def _terminate(self, grace_s: float) -> None:
        """SIGTERM the engine's whole process group, then SIGKILL what is left after grace_s."""
        proc = self._proc
        if proc is None:
            return
        pgid = proc.pid  # start_new_session: the group id is the leader's pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), grace_s)
        # The leader may be gone while its workers linger: kill the group either way.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 5)
