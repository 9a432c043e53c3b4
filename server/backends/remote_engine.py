"""An engine that runs elsewhere (a vLLM Deployment in a cluster): the gateway only watches it."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from server.backends.engine_client import EngineClient, EngineError
from server.backends.engine_process import EngineState

log = logging.getLogger("leanserve.engine")

HEALTH_TIMEOUT_S = 2.0


class RemoteEngine:
    """Polls {url}/health; `ready` follows it. Same surface as EngineProcess."""

    def __init__(self, name: str, url: str, poll_s: float = 2.0, api_key: str | None = None):
        self.name = name
        self.url = url.rstrip("/")
        self.api_key = api_key  # remote_engine_keys
        self.poll_s = poll_s
        self.state = EngineState.STARTING
        self.last_error: str | None = None
        self.restarts = 0
        self.pid = None
        self._ready = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.on_down = None  # called when a healthy engine stops answering
        self.on_up = None  # called when it answers again

    @property
    def ready(self) -> bool:
        return self.state == EngineState.READY

    def retry_after_s(self) -> int:
        return max(1, round(self.poll_s))

    async def start(self) -> None:
        self._task = asyncio.create_task(self._poll(), name=f"remote-{self.name}")

    async def wait_ready(self, timeout: float | None = None) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout)
        return self.ready

    async def stop(self, grace_s: float = 0) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.state = EngineState.STOPPED

    async def _poll(self) -> None:
        # remote_engine_keys: the key goes on every call, health checks included.
        async with EngineClient(self.url, HEALTH_TIMEOUT_S, self.api_key) as client:
            while True:
                try:
                    healthy = await client.health()
                    self.last_error = None if healthy else "health check failed"
                except EngineError as exc:
                    healthy, self.last_error = False, f"unreachable: {exc.cause}"
                if self.ready and not healthy and self.on_down is not None:
                    self.on_down()
                if healthy and not self.ready and self.on_up is not None:
                    self.on_up()
                if healthy != self.ready:
                    log.info(
                        "remote engine %s at %s: %s",
                        self.name,
                        self.url,
                        "up" if healthy else "down",
                    )
                self.state = EngineState.READY if healthy else EngineState.RESTARTING
                (self._ready.set if healthy else self._ready.clear)()
                await asyncio.sleep(self.poll_s)
