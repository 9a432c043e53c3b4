"""Build the FastAPI app: routers, error handlers, and the engines' lifecycle."""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from server import basemodel, errors
from server.auth import admin_key, api_keys, metrics_key
from server.backends.engine_process import EngineConfig, EngineProcess, compile_cache_dir
from server.backends.registry import Backend, Registry, engine_client
from server.backends.remote_engine import RemoteEngine
from server.experiments.router import router as experiments_router
from server.experiments.service import Experiments
from server.health import loop_lag
from server.health.router import router as health_router
from server.http_limits import BodyLimits
from server.inference.router import router as inference_router
from server.limits import RateLimiter
from server.metrics.gpu import Nvml
from server.metrics.refresher import CachedCollector, refresh_forever
from server.metrics.registry import Metrics
from server.metrics.resources import ResourceCollector
from server.models_api.router import router as models_router
from server.placement import Placer, Plan, plan_for, table
from server.quality.shadow import Shadow
from server.settings import Settings
from server.state import AppState, Keys
from server.ui.router import router as ui_router
from server.ui.router import start_rates
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


def remote_engine_key(settings: Settings, name: str) -> str | None:
    if name in settings.remote_engine_keys:
        return settings.remote_engine_keys[name]
    path = settings.remote_engine_key_files.get(name)
    if path is None:
        return None
    return path.read_text().strip() or None


def build_registry(settings: Settings, prepare=None, placement: Plan | None = None) -> Registry:
    """`prepare`: returns the base checkpoint's path, once (shared with the variant builds);
    `placement`: the plan the base engine follows (default: planned here)."""
    base = basemodel.expected_name(settings.model)
    registry = Registry(base_name=base)
    timeout = settings.request_timeout_s
    for name, url in settings.remote_engines.items():
        key = remote_engine_key(settings, name)
        registry.add(
            Backend(name, RemoteEngine(name, url, api_key=key), engine_client(url, timeout, key))
        )
    if base not in registry.backends:
        config = EngineConfig.from_settings(
            settings.engine,
            base,
            settings.model,
            log_path=settings.home / "logs" / f"engine-{base}.log",
            placement=(placement or plan_for(settings)).engines.get(base),
            compile_cache=compile_cache_dir(settings.home),
        )
        process = EngineProcess(config, prepare=prepare or (lambda: prepare_model(settings)))
        registry.add(Backend(base, process, engine_client(process.url, timeout, process.api_key)))
    return registry


def experiment_store_url(settings: Settings) -> str:
    if settings.experiment_store:
        return settings.experiment_store
    settings.home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(settings.home / 'experiments.db').resolve()}"


def create_app(settings: Settings, placement: Plan | None = None) -> FastAPI:
    """`placement`: the plan `leanserve serve` made (and refused to start without); default:
    planned at start, for this machine."""
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
        current = placement
        if current is None and base not in settings.remote_engines:
            current = plan_for(settings)
        registry = build_registry(settings, base_path, current)
        if current is not None:
            log.info("placement plan:\n%s", table(current))
            for name, where in current.engines.items():
                if name in registry.backends:
                    metrics.set_placement(name, where)
        for name, backend in registry.backends.items():
            metrics.add_variant(name)
            backend.breaker.failures = settings.routing.breaker_failures
            backend.breaker.cooldown_s = settings.routing.breaker_cooldown_s
        experiments = Experiments.from_settings(
            settings.experiments,
            experiment_store_url(settings),
            metrics,
            settings.experiment_refresh_s,
            settings.experiment_guardrail_check_s,
        )
        variants = VariantManager(
            settings, registry, metrics, base_path, Placer(current, settings) if current else None
        )
        limits = settings.limits
        experiments.store.feedback_ttl_s = limits.unattached_feedback_ttl_s
        experiments.store.feedback_max_unattached = limits.unattached_feedback_max
        experiments.store.on_reject = metrics.experiment_outcomes_rejected.inc
        keys = Keys(api_keys(settings.auth), admin_key(settings.auth), metrics_key(settings.auth))
        limiter = RateLimiter(limits.requests_per_minute)
        auth_failures = RateLimiter(
            limits.failed_auth_per_minute,
            message="Too many failed authentications from this address "
            "({per_minute} per minute); retry later.",
            code="too_many_auth_failures",
        )
        shadow = Shadow(settings.quality, registry, metrics)
        app.state.leanserve = AppState(
            settings, registry, metrics, experiments, variants, keys, limiter,
            auth_failures=auth_failures, shadow=shadow,
        )  # fmt: skip
        collector = None
        if settings.metrics_enabled:
            collector = CachedCollector(ResourceCollector(registry, metrics, Nvml.open()))
            metrics.registry.register(collector)
        await experiments.start()
        lag_watch = asyncio.create_task(loop_lag.watch(), name="loop-lag")
        metrics_refresh = asyncio.create_task(
            refresh_forever(collector, registry, metrics, settings.metrics_refresh_s),
            name="metrics-refresh",
        )
        ui_rates = start_rates(app, metrics)
        await registry.start()
        log.info("leanserve up; engines starting: %s", ", ".join(registry.backends))
        if registry.base_name in settings.remote_engines:
            log.info("base served remotely: variants are built and served elsewhere")
        else:
            await variants.start()
        await shadow.start()
        try:
            yield
        finally:
            await shadow.stop()  # first: it calls the engines
            log.info("stopping variant builds and engines")
            await variants.stop()
            await registry.stop()
            await experiments.stop()
            lag_watch.cancel()
            metrics_refresh.cancel()
            ui_rates.cancel()

    # The docs describe every endpoint and field: public on an open gateway, closed by default
    # once it takes API keys (docs_enabled decides either way).
    docs = settings.docs_enabled
    if docs is None:
        docs = not api_keys(settings.auth)
    app = FastAPI(
        title="leanserve",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.add_middleware(
        BodyLimits,
        max_bytes=settings.limits.max_body_bytes,
        timeout_s=settings.limits.body_timeout_s,
    )
    errors.install(app)
    app.include_router(inference_router)
    app.include_router(models_router)
    app.include_router(health_router)
    app.include_router(variants_router)
    app.include_router(experiments_router)
    app.include_router(ui_router)
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
