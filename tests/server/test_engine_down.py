"""When an engine's process dies, requests still waiting on a connection to it fail at once,
even where the socket stays open (here: a server that accepts and never answers)."""

from __future__ import annotations

import asyncio
import sys

import httpx
import pytest

from server.backends.engine_process import EngineConfig, EngineProcess
from server.backends.registry import Backend, engine_client


async def _silent_server() -> tuple[asyncio.AbstractServer, str]:
    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(3600)

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


async def test_waiting_requests_fail_at_once_when_the_engine_process_dies():
    server, url = await _silent_server()
    engine = EngineProcess(EngineConfig(name="m", model="unused", python=sys.executable))
    backend = Backend("m", engine, engine_client(url, 600))
    old_client = backend.client
    waiting = asyncio.create_task(backend.client.post("/v1/chat/completions", json={}))
    await asyncio.sleep(0.3)
    assert not waiting.done(), "the silent server must keep the request waiting"

    engine.on_down()  # what the supervisor calls when the process exits

    with pytest.raises(httpx.TransportError):  # the gateway answers these with 503
        await asyncio.wait_for(waiting, 2)
    assert backend.breaker.open
    assert backend.client is not old_client, "a restarted engine gets fresh connections"
    assert str(backend.client.base_url) == str(old_client.base_url)
    await backend.client.aclose()
    server.close()
