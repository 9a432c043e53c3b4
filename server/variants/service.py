"""Variants on the fly: build each declared variant with a compress job, then serve it.

Jobs run one at a time (a queue): on a CPU machine two builds would only slow each other and
the engines. A job is `python -m compress build ... --progress-json` in the compress
environment; its JSON lines feed the state, percent and time left shown by GET /v1/variants.
When a job is done, the variant's vLLM engine starts and the router takes it in. A restart asks
compress again, which finds the variant in the store and answers at once: nothing is rebuilt.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from compress.schema import (
    Card,
    DoneEvent,
    ErrorEvent,
    Event,
    ProgressEvent,
    StageEvent,
    parse_event,
    problems,
)
from server.backends.engine_process import EngineConfig, EngineProcess, compile_cache_dir
from server.backends.registry import Backend, Registry, engine_client
from server.errors import APIError
from server.metrics.registry import Metrics
from server.placement import Placer, PlanError
from server.placement.kernels import cpu_refusal
from server.placement.needs import GIB, base_bytes, variant_need
from server.settings import Settings

log = logging.getLogger("leanserve.variants")

# Recipe names as the compress package names them (w8a8, prune-0.25+distill, sparse-2:4 ...).
# Nothing else is accepted from the API: no paths and no recipe files (those only by config or
# CLI), so no way out of the store. Matched whole (fullmatch: `$` would allow a final newline).
RECIPE_NAME = re.compile(r"[a-z0-9][a-z0-9.:_-]*(\+[a-z0-9][a-z0-9.:_-]*)*")
BUILD_FAILED = "The build failed; /v1/variants with the admin key, or the gateway's log, says why."


def is_recipe_name(recipe: str) -> bool:
    """A named recipe (or a chain of them), as the API accepts: not a file name or path."""
    return bool(RECIPE_NAME.fullmatch(recipe)) and not recipe.endswith((".yaml", ".yml"))


@dataclass
class Variant:
    id: str  # the recipe name; the public model name is "<base>:<id>"
    name: str
    recipe: str
    state: str = "queued"  # queued, building, built, failed, retiring
    percent: float = 0.0
    stage: str | None = None
    error: str | None = None
    reused: bool = False  # found complete in the store: nothing was built
    path: str | None = None
    card: dict | None = None
    queued_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None


def variant_id(recipe: str) -> str:
    """A recipe file's variant is named after the file; a recipe name is its own id."""
    return Path(recipe).stem if recipe.endswith((".yaml", ".yml")) else recipe


class VariantManager:
    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        metrics: Metrics,
        base_model: Callable[[], Awaitable[str]],
        placer: Placer | None = None,
    ):
        self.settings = settings
        self.registry = registry
        self.metrics = metrics
        self.base_model = base_model  # the prepared base checkpoint's path
        self.placer = placer  # the placement plan; None: engines are not placed
        self.variants: dict[str, Variant] = {}
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._worker: asyncio.Task | None = None
        self._job: asyncio.subprocess.Process | None = None

    # -- API -----------------------------------------------------------------------------------
    def request(self, recipe: str, from_config: bool = False) -> Variant:
        if not from_config and not is_recipe_name(recipe):
            raise APIError(
                400,
                f"Invalid recipe name {recipe!r}: use a recipe name such as w8a8 or "
                "prune-0.25+distill (see `leanserve compress list-recipes`).",
                "invalid_request_error",
                "recipe",
                "invalid_recipe",
            )
        vid = variant_id(recipe)
        existing = self.variants.get(vid)
        if existing and existing.state not in ("failed", "no_room"):
            return existing
        variant = Variant(vid, f"{self.registry.base_name}:{vid}", recipe)
        self.variants[vid] = variant
        if self.placer is not None:
            # Room is claimed before the build (from the recipe's estimated size): a variant
            # that cannot fit is refused now, not after a build, and the base keeps its share.
            try:
                placement = self.placer.place(self._need(variant))
            except PlanError as exc:
                variant.state, variant.error = "no_room", str(exc)
                log.warning("variant %s: %s", variant.name, exc)
                return variant
            # A variant this machine's vLLM cannot run fails now, not after an hour's build.
            if self._unrunnable(variant, placement):
                return variant
        self.metrics.add_build(variant.name)
        self._queue.put_nowait(vid)
        return variant

    def get(self, vid: str) -> Variant:
        if vid not in self.variants:
            raise APIError(404, f"No variant '{vid}'.", "invalid_request_error", "id", "not_found")
        return self.variants[vid]

    def known_names(self) -> set[str]:
        return {
            self.registry.base_name,
            *self.registry.backends,
            *(v.name for v in self.variants.values()),
        }

    def view(self, variant: Variant, detail: bool = False) -> dict:
        """What GET /v1/variants shows; `detail` (the admin's) adds the paths on this host and
        the build's own error message, which may name them."""
        backend = self.registry.backends.get(variant.name)
        state = variant.state
        if state == "built" and backend is not None:
            state = "ready" if backend.ready else f"engine {backend.engine.state}"
        return {
            "id": variant.id,
            "model": variant.name,
            "recipe": variant.recipe,
            "state": state,
            "percent": round(variant.percent, 1),
            "stage": variant.stage,
            "eta_s": self._eta(variant),
            "error": variant.error
            if detail or variant.error is None or state == "no_room"  # no path in it
            else BUILD_FAILED,
            "reused": variant.reused,
            "path": variant.path if detail else None,
            "card": variant.card if detail else _without_paths(variant.card),
        }

    def _eta(self, variant: Variant) -> float | None:
        """Seconds left, from the job's overall percent and time so far (stages vary in speed,
        so this is a rough guide that firms up as the job runs)."""
        if variant.state != "building" or not variant.started_at or variant.percent <= 0:
            return 0.0 if variant.state == "built" else None
        elapsed = time.time() - variant.started_at
        return round(elapsed * (100 - variant.percent) / variant.percent)

    async def retire(self, vid: str, drain_s: float = 60.0) -> Variant:
        """Stop routing to the variant, let its in-flight requests finish, stop its engine."""
        variant = self.get(vid)
        if variant.state in ("queued", "building"):
            if variant.state == "building" and self._job and self._job.returncode is None:
                self._job.terminate()  # compress removes its temporary folder on SIGTERM
            variant.state, variant.error = "failed", "retired before it was built"
            self._forget(variant)
            return variant
        variant.state = "retiring"
        backend = self.registry.backends.get(variant.name)
        if backend is not None:
            backend.accepting = False
            deadline = time.monotonic() + drain_s
            while backend.in_flight > 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            self.registry.remove(variant.name)
            await backend.engine.stop()
            await backend.client.aclose()
        self._forget(variant)
        return variant

    def _forget(self, variant: Variant) -> None:
        """Drop the variant and give its place in the plan back."""
        self.variants.pop(variant.id, None)
        if self.placer is not None:
            self.placer.release(variant.name)
        self.metrics.clear_placement(variant.name)

    def _need(self, variant: Variant):
        """What the variant's engine needs: the card's size once built, else an estimate."""
        size = ((variant.card or {}).get("size") or {}).get("bytes")
        engine = self.settings.engine
        return variant_need(
            variant.name, variant.recipe, base_bytes(self.settings),
            int(engine.kv_cache_gib * GIB), engine.weights.get(variant.id, 1.0), size,
        )  # fmt: skip

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        for recipe in self.settings.variants:
            self.request(recipe, from_config=True)
        self._worker = asyncio.create_task(self._work(), name="variant-builder")

    async def stop(self) -> None:
        if self._job and self._job.returncode is None:
            self._job.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._job.wait(), 10)
        if self._worker:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    async def _work(self) -> None:
        while True:
            vid = await self._queue.get()
            variant = self.variants.get(vid)
            if variant is None or variant.state != "queued":
                continue
            try:
                await self._build(variant)
            except Exception as exc:  # one bad build must not stop the queue
                log.exception("building %s failed", variant.name)
                variant.state, variant.error = "failed", str(exc)
            if variant.state == "failed":
                self.metrics.build_failures.labels(variant.name).inc()
                self.metrics.build_failed.labels(variant.name).set(1)
                if self.placer is not None:
                    self.placer.release(variant.name)
                continue
            self.metrics.build_failed.labels(variant.name).set(0)
            await self._serve(variant)

    async def _build(self, variant: Variant) -> None:
        base = await self.base_model()
        variant.state, variant.started_at = "building", time.time()
        store = self.settings.home / "variants"
        cmd = [
            self.settings.compress_python, "-m", "compress", "build",
            "--base", base, "--recipe", variant.recipe, "--store", str(store),
            "--progress-json", "--no-bars", *self.settings.build_args,
        ]  # fmt: skip
        if self.settings.build_speed:
            cmd += ["--speed", "--vllm-python", self.settings.engine.python]
        env, setup = None, None
        if self.placer is not None:  # where the plan runs builds: a device, cores, nice 19
            builds = self.placer.plan.builds
            cmd += ["--device", builds.device]
            env, setup = {**os.environ, **builds.env()}, builds.preexec()
        log_path = self.settings.home / "logs" / f"build-{variant.id.replace(':', '_')}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as stderr:
            self._job = await asyncio.create_subprocess_exec(
                *cmd,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                stdin=asyncio.subprocess.DEVNULL,
                env=env,
                preexec_fn=setup,
            )
            last_error = None
            async for line in self._job.stdout:
                try:
                    parsed = _parse(line)
                except ValidationError as exc:
                    last_error = f"compress wrote a line the gateway cannot read: {problems(exc)}"
                    log.warning("variant %s: %s", variant.name, last_error)
                    continue
                if parsed is None:
                    continue
                event, raw = parsed
                if isinstance(event, ProgressEvent):
                    self._progress(variant, event)
                elif isinstance(event, StageEvent):
                    variant.stage = event.stage
                elif isinstance(event, DoneEvent):
                    # The card as compress sent it (validated): the API shows it unchanged.
                    variant.path, variant.card = event.path, raw.get("card")
                    variant.reused = event.skipped
                elif isinstance(event, ErrorEvent):
                    last_error = event.message
            code = await self._job.wait()
        variant.finished_at = time.time()
        if code == 0 and variant.path:
            variant.state, variant.percent = "built", 100.0
            log.info("variant %s built at %s", variant.name, variant.path)
        else:
            variant.state = "failed"
            variant.error = last_error or f"compress exited with code {code}; see {log_path}"
            log.error("variant %s failed: %s", variant.name, variant.error)
        self.metrics.build_progress.labels(variant.name).set(variant.percent / 100)

    def _progress(self, variant: Variant, event: ProgressEvent) -> None:
        variant.stage = event.stage or variant.stage
        overall = float(event.overall_percent or event.percent or 0.0)
        variant.percent = max(variant.percent, min(overall, 99.9))
        self.metrics.build_progress.labels(variant.name).set(variant.percent / 100)

    def _unrunnable(self, variant: Variant, placement) -> bool:
        """A variant this machine's vLLM cannot run (server/placement/kernels.py) fails with the
        reason and gives its room back. Before the build the recipe's name tells; after it, the
        card's resolved steps too."""
        steps = ((variant.card or {}).get("recipe") or {}).get("steps") or []
        reason = cpu_refusal(self.placer.plan.machine, placement.device, variant.recipe, steps)
        if reason is None:
            return False
        self.placer.release(variant.name)
        variant.state, variant.error = "failed", reason
        log.warning("variant %s not served: %s", variant.name, reason)
        return True

    async def _serve(self, variant: Variant) -> None:
        placement = None
        if self.placer is not None:
            try:  # the place claimed at the request, or (declared variants) the planned one
                placement = self.placer.place(self._need(variant))
            except PlanError as exc:
                variant.state, variant.error = "no_room", str(exc)
                log.warning("variant %s built, not served: %s", variant.name, exc)
                return
            if self._unrunnable(variant, placement):  # a recipe file's w4a16, seen in its card
                return
        config = EngineConfig.from_settings(
            self.settings.engine,
            variant.name,
            variant.path,
            log_path=self.settings.home / "logs" / f"engine-{variant.id.replace(':', '_')}.log",
            placement=placement,
            compile_cache=compile_cache_dir(self.settings.home),
        )
        process = EngineProcess(config)
        card = Card.model_validate(variant.card) if variant.card else None
        backend = Backend(
            variant.name,
            process,
            engine_client(process.url, self.settings.request_timeout_s, process.api_key),
            card=card,
            variant=variant.id,
        )
        backend.breaker.failures = self.settings.routing.breaker_failures
        backend.breaker.cooldown_s = self.settings.routing.breaker_cooldown_s
        self.metrics.add_variant(variant.name)
        self.metrics.set_card(variant.name, variant.recipe, card)
        if placement is not None:
            self.metrics.set_placement(variant.name, placement)
        self.registry.add(backend)  # not routed to until its engine is ready
        await process.start()


def _without_paths(card: dict | None) -> dict | None:
    base = (card or {}).get("base")
    if not isinstance(base, dict) or "path" not in base:
        return card
    return {**card, "base": {k: v for k, v in base.items() if k != "path"}}


def _parse(line: bytes) -> tuple[Event, dict] | None:
    """A progress line as (its model, its JSON); None for other output and unknown kinds.

    Raises ValidationError for a known kind with fields of the wrong type.
    """
    try:
        raw = json.loads(line)
    except ValueError:
        return None
    event = parse_event(raw)
    return (event, raw) if event is not None else None
