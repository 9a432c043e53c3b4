"""The backends the gateway can send a request to, by public model name."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from compress.schema import Card
from server.backends.engine_client import EngineClient, EngineError
from server.backends.engine_process import EngineProcess
from server.backends.lease import Books, Lease, RequestInfo
from server.backends.remote_engine import RemoteEngine
from server.errors import model_not_found
from server.limits import StreamSlot
from server.quality.live import LiveQuality
from server.routing.admission import ConcurrencyLimit
from server.routing.breaker import Breaker
from server.routing.live_stats import LiveStats

Engine = EngineProcess | RemoteEngine


@dataclass
class Backend:
    """One served variant: its engine and the client that talks to it."""

    name: str  # public model name: "<base>" or "<base>:<variant>"
    engine: Engine
    client: EngineClient
    card: Card | None = None  # the variant's measured card; None for the base
    in_flight: int = 0  # requests between their lease's start and its finish
    max_model_len: int | None = None  # read from the engine once it is ready
    variant: str | None = None  # recipe name; None for the base
    stats: LiveStats = field(default_factory=LiveStats)
    breaker: Breaker = field(default_factory=Breaker)
    admission: ConcurrencyLimit = field(default_factory=ConcurrencyLimit)  # for the slo policy
    accepting: bool = True  # False while retiring: no new requests
    live_quality: LiveQuality = field(default_factory=LiveQuality)  # against the base, live

    @property
    def ready(self) -> bool:
        return self.engine.ready

    def lease(
        self, kind: str, request: RequestInfo, books: Books, slot: StreamSlot | None = None
    ) -> Lease:
        """Serve one request here: `async with backend.lease(...) as lease:`. `kind` is "chat"
        or "completions"; `slot` (streams only) is the request's stream slot, given back when
        the stream ends."""
        return Lease(self, kind, request, books, slot)

    def engine_down(self) -> None:
        """The engine was seen dying: open the breaker at once (no request needs to fail
        first)."""
        self.breaker.trip()
        if isinstance(self.engine, EngineProcess):
            # The process exited: drop every connection to it, so a request still waiting on
            # one fails now (503, or an error event mid-stream). A remote engine that misses a
            # health check may still be streaming: its connections stay.
            self.client.drop_connections()

    def engine_up(self) -> None:
        """The engine answers (again): close the breaker."""
        self.breaker.success()

    async def context_window(self) -> int | None:
        """The engine's max_model_len, asked once (remote engines may differ from our config)."""
        if self.max_model_len is None:
            with contextlib.suppress(EngineError, KeyError, IndexError, ValueError, TypeError):
                self.max_model_len = (await self.client.models())[0].get("max_model_len")
        return self.max_model_len


def engine_client(url: str, timeout_s: float, api_key: str | None = None) -> EngineClient:
    """Every call to the engine goes through this client, so each carries its key."""
    return EngineClient(url, timeout_s, api_key)


@dataclass
class Registry:
    base_name: str
    backends: dict[str, Backend] = field(default_factory=dict)

    def add(self, backend: Backend) -> None:
        # The engine's supervisor (or health poll) tells its backend when it dies or answers
        # again; wired here, where the two are put together, and undone on removal.
        backend.engine.on_down = backend.engine_down
        backend.engine.on_up = backend.engine_up
        self.backends[backend.name] = backend

    def remove(self, name: str) -> Backend | None:
        backend = self.backends.pop(name, None)
        if backend is not None:
            backend.engine.on_down = backend.engine.on_up = None
        return backend

    def get(self, model: str) -> Backend:
        """A backend by public name; "<base>:base" pins the base itself."""
        if model == f"{self.base_name}:base":
            model = self.base_name
        backend = self.backends.get(model)
        if backend is None:
            raise model_not_found(model)
        return backend

    def core_mates(self, backend: Backend, device: str | None = None) -> list[Backend]:
        """The engines the placement plan has computing on the same cores or GPU as `backend`
        (on a 2-core machine every variant shares the base's core); `device` ("cpu", "cuda")
        keeps only placements on that kind. Remote engines: none known."""
        placement = getattr(backend.engine, "placement", None)
        if placement is None or (device is not None and placement.device != device):
            return []
        return [self.backends[n] for n in placement.shares_with if n in self.backends]

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
