"""Build the FastAPI app: routers, error handlers, and the engines' lifecycle."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from server import basemodel, errors
from server.auth import admin_key, api_keys
from server.backends.engine_process import EngineConfig, EngineProcess
from server.backends.registry import Backend, Registry, engine_client
from server.backends.remote_engine import RemoteEngine
from server.experiments.router import router as experiments_router
from server.experiments.service import Experiments
from server.health import loop_lag
from server.health.router import router as health_router
from server.inference.router import router as inference_router
from server.limits import BodySizeLimit, RateLimiter
from server.metrics.gpu import Nvml
from server.metrics.registry import Metrics
from server.metrics.resources import ResourceCollector
from server.models_api.router import router as models_router
from server.settings import Settings
from server.state import AppState, Keys
from server.variants.router import router as variants_router
from server.variants.service import VariantManager

log = logging.getLogger("leanserve")


async def prepare_model(settings: Settings) -> str:
    """Run `python -m server.basemodel` in the engine's environment; returns what vLLM loads.

    A separate process keeps torch and transformers out of the gateway's memory.
    """
    proc = await asyncio.create_subprocess_exec(
        settings.engine.python,
        "-m",
        "server.basemodel",
        settings.model,
        "--home",
        str(settings.home),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        raise basemodel.ModelError(lines[-1] if lines else f"exit code {proc.returncode}")
    return json.loads(out.decode().strip().splitlines()[-1])["source"]


def cpu_core(settings: Settings, index: int) -> str | None:
    """The core the index-th local engine binds to (round robin), when spreading on CPUs."""
    if not settings.engine.cpu_spread:
        return None
    cores = settings.engine.cpus or sorted(os.sched_getaffinity(0))
    return str(cores[index % len(cores)])


def build_registry(settings: Settings, prepare=None) -> Registry:
    """`prepare`: returns the base checkpoint's path, once (shared with the variant builds)."""
    base = basemodel.expected_name(settings.model)
    registry = Registry(base_name=base)
    timeout = settings.request_timeout_s
    for name, url in settings.remote_engines.items():
        registry.add(Backend(name, RemoteEngine(name, url), engine_client(url, timeout)))
    if base not in registry.backends:
        config = EngineConfig.from_settings(
            settings.engine,
            base,
            settings.model,
            log_path=settings.home / "logs" / f"engine-{base}.log",
            cpu_bind=cpu_core(settings, 0),
        )
        process = EngineProcess(config, prepare=prepare or (lambda: prepare_model(settings)))
        registry.add(Backend(base, process, engine_client(process.url, timeout)))
    return registry


def experiment_store_url(settings: Settings) -> str:
    if settings.experiment_store:
        return settings.experiment_store
    settings.home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(settings.home / 'experiments.db').resolve()}"


def create_app(settings: Settings) -> FastAPI:
    metrics = Metrics(enabled=settings.metrics_enabled)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        base = basemodel.expected_name(settings.model)

        async def prepare_base() -> str:
            path = await prepare_model(settings)
            metrics.set_card(base, "base", {"quality": {"top1_agreement": 1.0}})
            if Path(path).is_dir():
                size = sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())
                metrics.variant_size.labels(base).set(size)
            return path

        base_path = _memo(prepare_base)
        registry = build_registry(settings, base_path)
        for name, backend in registry.backends.items():
            metrics.add_variant(name)
            backend.breaker.failures = settings.routing.breaker_failures
            backend.breaker.cooldown_s = settings.routing.breaker_cooldown_s
        experiments = Experiments.from_settings(
            settings.experiments, experiment_store_url(settings), metrics
        )
        variants = VariantManager(
            settings, registry, metrics, base_path, lambda i: cpu_core(settings, i)
        )
        keys = Keys(api_keys(settings.auth), admin_key(settings.auth))
        limiter = RateLimiter(settings.limits.requests_per_minute)
        app.state.leanserve = AppState(
            settings, registry, metrics, experiments, variants, keys, limiter
        )
        if settings.metrics_enabled:
            metrics.registry.register(ResourceCollector(registry, metrics, Nvml.open()))
        experiments.store.start()
        lag_watch = asyncio.create_task(loop_lag.watch(), name="loop-lag")
        await registry.start()
        log.info("leanserve up; engines starting: %s", ", ".join(registry.backends))
        if registry.base_name in settings.remote_engines:
            log.info("base served remotely: variants are built and served elsewhere")
        else:
            await variants.start()
        try:
            yield
        finally:
            log.info("stopping variant builds and engines")
            await variants.stop()
            await registry.stop()
            await experiments.store.stop()
            lag_watch.cancel()

    app = FastAPI(title="leanserve", version="0.1.0", lifespan=lifespan)
    app.add_middleware(BodySizeLimit, max_bytes=settings.limits.max_body_bytes)
    errors.install(app)
    app.include_router(inference_router)
    app.include_router(models_router)
    app.include_router(health_router)
    app.include_router(variants_router)
    app.include_router(experiments_router)
    return app


def _memo(factory):
    """An async function that runs `factory` once and then returns its result."""
    task: asyncio.Task | None = None

    async def get():
        nonlocal task
        if task is None or (task.done() and task.exception() is not None):
            task = asyncio.ensure_future(factory())
        return await asyncio.shield(task)

    return get
