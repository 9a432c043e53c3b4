"""When an engine's process dies, requests still waiting on a connection to it fail at once,
even where the socket stays open (here: a server that accepts and never answers)."""

from __future__ import annotations

import asyncio
import sys

import pytest

from server.backends.engine_client import EngineError
from server.backends.engine_process import EngineConfig, EngineProcess
from server.backends.registry import Backend, Registry, engine_client


async def _silent_server() -> tuple[asyncio.AbstractServer, str]:
    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(3600)

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


async def test_waiting_requests_fail_at_once_when_the_engine_process_dies():
    server, url = await _silent_server()
    engine = EngineProcess(EngineConfig(name="m", model="unused", python=sys.executable))
    registry = Registry("m")
    registry.add(Backend("m", engine, engine_client(url, 600)))  # wires the engine's events
    backend = registry.backends["m"]
    waiting = asyncio.create_task(backend.client.complete("/v1/chat/completions", {}))
    await asyncio.sleep(0.3)
    assert not waiting.done(), "the silent server must keep the request waiting"

    engine.on_down()  # what the supervisor calls when the process exits

    with pytest.raises(EngineError):  # the gateway answers these with 503
        await asyncio.wait_for(waiting, 2)
    assert backend.breaker.open
    # A restarted engine gets fresh connections: a new call waits for an answer again.
    again = asyncio.create_task(backend.client.complete("/v1/chat/completions", {}))
    await asyncio.sleep(0.3)
    assert not again.done(), "calls after the drop must open new connections"
    again.cancel()
    await backend.client.aclose()
    server.close()
