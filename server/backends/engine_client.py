"""The one place the gateway speaks HTTP to an engine (a vLLM OpenAI server, local or remote).

Every call carries the engine's key and a timeout; transport failures come out as EngineError,
so no other module needs to know httpx. Bodies pass through as bytes: the gateway relays the
engine's JSON and SSE as they come and parses only what it must (server/inference/relay.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

CONNECT_TIMEOUT_S = 5.0


class EngineError(Exception):
    """The engine could not be reached, did not answer in time, or broke off an answer."""

    def __init__(self, exc: httpx.HTTPError) -> None:
        super().__init__(f"{type(exc).__name__}: {exc}")
        self.cause = type(exc).__name__
        # A connect timeout means nothing was sent: it counts as unreachable, not as slow.
        self.timed_out = isinstance(exc, httpx.TimeoutException) and not isinstance(
            exc, httpx.ConnectTimeout
        )


@dataclass
class EngineReply:
    status: int
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)


class EngineStream:
    """An engine's streamed answer, its status and headers in: iterate for the raw body chunks
    as they arrive (EngineError when the engine breaks off); close it once done."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self._chunks: AsyncIterator[bytes] | None = None
        self.status = response.status_code

    async def read(self) -> bytes:
        """The whole body: for answers that are not a stream (an engine's error)."""
        try:
            return await self._response.aread()
        except httpx.HTTPError as exc:
            raise EngineError(exc) from exc

    def __aiter__(self) -> AsyncIterator[bytes]:
        if self._chunks is None:
            self._chunks = self._response.aiter_raw()
        return self

    async def __anext__(self) -> bytes:
        try:
            return await anext(self._chunks)
        except httpx.HTTPError as exc:
            raise EngineError(exc) from exc

    async def aclose(self) -> None:
        await self._response.aclose()


class EngineClient:
    """HTTP to one engine at `url`: health, models, tokenize, metrics, complete and stream.

    `transport` replaces the network (tests pass an httpx.MockTransport standing in for vLLM).
    """

    def __init__(
        self,
        url: str,
        timeout_s: float,
        api_key: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.api_key = api_key
        self._transport = transport
        self._http = self._connect()
        self._closing: set[asyncio.Task] = set()

    def _connect(self) -> httpx.AsyncClient:
        # No pool limit: the engine does its own queueing, and a cap here would add a second
        # queue in front of it.
        return httpx.AsyncClient(
            base_url=self.url,
            timeout=httpx.Timeout(self.timeout_s, connect=CONNECT_TIMEOUT_S),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
            headers={"Authorization": f"Bearer {self.api_key}"} if self.api_key else None,
            transport=self._transport,
        )

    @property
    def headers(self) -> dict[str, str]:
        """What every call sends besides its body (the key), lower-case names."""
        return dict(self._http.headers)

    async def health(self) -> bool:
        """True when /health answers 200 (vLLM leaves /health open; the key goes anyway)."""
        return (await self._get("/health")).status == 200

    async def models(self) -> list[dict]:
        """The engine's /v1/models entries (each has `id` and `max_model_len`)."""
        return (await self._get("/v1/models")).json()["data"]

    async def metrics_text(self, timeout_s: float | None = None) -> str:
        """The engine's Prometheus exposition, as text."""
        return (await self._get("/metrics", timeout_s)).content.decode(errors="replace")

    async def tokenize(self, body: dict) -> EngineReply:
        """POST /tokenize: the answer's `count` is the prompt's length in tokens."""
        return await self.complete("/tokenize", body)

    async def complete(self, path: str, body: dict) -> EngineReply:
        """POST a JSON request and read the whole answer, whatever its status."""
        try:
            response = await self._http.post(path, json=body)
        except httpx.HTTPError as exc:
            raise EngineError(exc) from exc
        return EngineReply(response.status_code, response.content)

    async def stream(self, path: str, body: dict) -> EngineStream:
        """POST a request and return once the answer's headers are in; the body streams."""
        request = self._http.build_request("POST", path, json=body)
        try:
            response = await self._http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise EngineError(exc) from exc
        return EngineStream(response)

    def drop_connections(self) -> None:
        """Close every connection to the engine, in the background; later calls open new ones.

        Requests still waiting on an old connection fail at once (EngineError), rather than
        waiting on a socket that something other than the dead engine may hold open.
        """
        old, self._http = self._http, self._connect()
        task = asyncio.get_running_loop().create_task(old.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self._http.aclose()

    async def __aenter__(self) -> EngineClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _get(self, path: str, timeout_s: float | None = None) -> EngineReply:
        timeout = httpx.USE_CLIENT_DEFAULT if timeout_s is None else timeout_s
        try:
            response = await self._http.get(path, timeout=timeout)
        except httpx.HTTPError as exc:
            raise EngineError(exc) from exc
        return EngineReply(response.status_code, response.content)
