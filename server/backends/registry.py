"""The backends the gateway can send a request to, by public model name."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import httpx

from compress.schema import Card
from server.backends.engine_process import EngineProcess
from server.backends.remote_engine import RemoteEngine
from server.errors import model_not_found
from server.routing.admission import ConcurrencyLimit
from server.routing.breaker import Breaker
from server.routing.live_stats import LiveStats

Engine = EngineProcess | RemoteEngine


@dataclass
class Backend:
    """One served variant: its engine and the HTTP client that talks to it."""

    name: str  # public model name: "<base>" or "<base>:<variant>"
    engine: Engine
    client: httpx.AsyncClient
    card: Card | None = None  # the variant's measured card; None for the base
    in_flight: int = 0
    max_model_len: int | None = None  # read from the engine once it is ready
    variant: str | None = None  # recipe name; None for the base
    stats: LiveStats = field(default_factory=LiveStats)
    breaker: Breaker = field(default_factory=Breaker)
    admission: ConcurrencyLimit = field(default_factory=ConcurrencyLimit)  # for the slo policy
    accepting: bool = True  # False while retiring: no new requests

    def __post_init__(self) -> None:
        # An engine seen dying opens the breaker at once (no request needs to fail first); the
        # engine answering again closes it.
        self.engine.on_down = self._engine_down
        self.engine.on_up = lambda: self.breaker.success()
        self._closing: set[asyncio.Task] = set()

    def _engine_down(self) -> None:
        self.breaker.trip()
        if isinstance(self.engine, EngineProcess):
            # The process exited: drop every connection to it, so a request still waiting on
            # one fails now (503, or an error event mid-stream) rather than waiting on a socket
            # that something else may hold open. A remote engine that misses a health check
            # may still be streaming: its connections stay.
            old = self.client
            self.client = engine_client(str(old.base_url), old.timeout.read, self.engine.api_key)
            task = asyncio.get_running_loop().create_task(old.aclose())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    @property
    def ready(self) -> bool:
        return self.engine.ready

    async def context_window(self) -> int | None:
        """The engine's max_model_len, asked once (remote engines may differ from our config)."""
        if self.max_model_len is None:
            with contextlib.suppress(httpx.HTTPError, KeyError, IndexError, ValueError):
                models = (await self.client.get("/v1/models")).json()["data"]
                self.max_model_len = models[0].get("max_model_len")
        return self.max_model_len


def engine_client(url: str, timeout_s: float, api_key: str | None = None) -> httpx.AsyncClient:
    """Every call to the engine goes through this client, so each carries its key."""
    # No pool limit: the engine does its own queueing, and a cap here would add a second queue.
    return httpx.AsyncClient(
        base_url=url,
        timeout=httpx.Timeout(timeout_s, connect=5.0),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
        headers={"Authorization": f"Bearer {api_key}"} if api_key else None,
    )


@dataclass
class Registry:
    base_name: str
    backends: dict[str, Backend] = field(default_factory=dict)

    def add(self, backend: Backend) -> None:
        self.backends[backend.name] = backend

    def remove(self, name: str) -> Backend | None:
        return self.backends.pop(name, None)

    def get(self, model: str) -> Backend:
        """A backend by public name; "<base>:base" pins the base itself."""
        if model == f"{self.base_name}:base":
            model = self.base_name
        backend = self.backends.get(model)
        if backend is None:
            raise model_not_found(model)
        return backend

    @property
    def ready(self) -> bool:
        """The routed name can be served: its base (or, when the base runs nowhere, any variant)
        answers. Variants still building or restarting do not make the gateway unready: routing
        and fallback go around them, and in a cluster they may build for hours."""
        base = self.backends.get(self.base_name)
        if base is not None:
            return base.ready
        return any(b.ready for b in self.backends.values())

    async def start(self) -> None:
        for backend in self.backends.values():
            await backend.engine.start()

    async def stop(self, grace_s: float = 10.0) -> None:
        await asyncio.gather(*(b.engine.stop(grace_s) for b in self.backends.values()))
        for backend in self.backends.values():
            with contextlib.suppress(Exception):
                await backend.client.aclose()
