"""A FAKE vLLM (a test double, not vLLM): an httpx.MockTransport that answers the gateway's
EngineClient as a vLLM OpenAI server would, or fails the way one does. With it, the gateway's
relay, fallback and accounting are tested in a second, where every test of them used to need a
real engine. The real engine's behaviour stays covered by the slow tests (test_disconnect.py,
test_engine_crash.py, test_engine_down.py, test_openai_client.py).

`mode` picks the answer to a completion request:
- "ok": JSON, or an SSE stream of `tokens` events, a usage-only event and [DONE], sent in
  chunks of `chunk_bytes` (so events and even their blank lines are cut across chunks);
- "error": 500 with vLLM's error body, before any token;
- "refused": the connection is refused (httpx.ConnectError, as from a dead port);
- "empty": 200 and SSE headers, then the connection drops before the first event;
- "break": the first token, then the connection drops (the engine died mid-stream);
- "hang": the first token (streams), then nothing until the client goes away.
`gate`, when given, holds every answer until it is set (a stream waiting for its first token).

`gateway()` builds the real inference routes and AppState over backends whose engines are
RemoteEngine objects marked ready by hand (nothing polls them) and whose clients use the fake.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from fastapi import FastAPI

from server import errors
from server.backends.engine_client import EngineClient
from server.backends.engine_process import EngineState
from server.backends.registry import Backend, Registry
from server.backends.remote_engine import RemoteEngine
from server.experiments.service import Experiments
from server.inference.router import router as inference_router
from server.limits import RateLimiter
from server.metrics.registry import Metrics
from server.settings import load_settings
from server.state import AppState, Keys

BASE = "m"
VARIANT = "m:v"


def sse(chunk: dict) -> bytes:
    return f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n".encode()


@dataclass
class FakeVllm:
    mode: str = "ok"
    tokens: int = 3
    chunk_bytes: int = 7
    gate: threading.Event | None = None
    calls: list[str] = field(default_factory=list)  # paths, in order
    closed: int = 0  # streams whose body the gateway closed or read to the end

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.calls.append(path)
        if path == "/health":
            return httpx.Response(200)
        if path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "fake", "max_model_len": 4096}]})
        if self.mode == "refused":
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        while self.gate is not None and not self.gate.is_set():
            await asyncio.sleep(0.01)
        if self.mode == "error":
            body = {"error": {"message": "fake engine failure", "type": "InternalServerError"}}
            return httpx.Response(500, json=body)
        body = json.loads(request.content)
        if not body.get("stream"):
            if self.mode == "hang":
                await asyncio.sleep(3600)
            return httpx.Response(200, json=self.answer(body["model"]))
        headers = {"content-type": "text/event-stream"}
        return httpx.Response(200, headers=headers, content=self.chunks(body, request))

    def answer(self, model: str) -> dict:
        return {
            "id": "cmpl-fake",
            "object": "chat.completion",
            "model": model,
            "choices": [{"index": 0, "message": {"content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
        }

    def events(self, model: str) -> list[bytes]:
        out = []
        for i in range(self.tokens):
            last = i == self.tokens - 1
            choice = {"index": 0, "delta": {"content": f"t{i}"}, "finish_reason": None}
            if last:
                choice["finish_reason"] = "length"
            out.append(sse({"id": "c", "model": model, "choices": [choice]}))
        usage = {"prompt_tokens": 5, "completion_tokens": self.tokens, "total_tokens": 5 + 3}
        out.append(sse({"id": "c", "model": model, "choices": [], "usage": usage}))
        out.append(b"data: [DONE]\n\n")
        return out

    async def chunks(self, body: dict, request: httpx.Request) -> AsyncIterator[bytes]:
        try:
            if self.mode == "empty":
                raise httpx.RemoteProtocolError("peer closed connection", request=request)
            events = self.events(body["model"])
            if self.mode in ("break", "hang"):
                yield events[0]
                if self.mode == "hang":
                    await asyncio.sleep(3600)
                raise httpx.RemoteProtocolError(
                    "peer closed connection without sending complete message body",
                    request=request,
                )
            data = b"".join(events)
            for start in range(0, len(data), self.chunk_bytes):
                yield data[start : start + self.chunk_bytes]
                await asyncio.sleep(0)
        finally:
            self.closed += 1


@dataclass
class Harness:
    app: FastAPI
    state: AppState
    engines: dict[str, FakeVllm]

    def backend(self, name: str) -> Backend:
        return self.state.registry.backends[name]

    def sample(self, metric: str, **labels: str) -> float:
        value = self.state.metrics.registry.get_sample_value(metric, labels)
        return 0.0 if value is None else value

    def requests(self, variant: str, status: int, kind: str = "chat") -> float:
        labels = {"variant": variant, "route": kind, "status": str(status)}
        return self.sample("leanserve_requests_total", **labels)

    def open_counts(self) -> dict[str, float]:
        """Everything that must be back at zero once no request is under way."""
        counts: dict[str, float] = {"open_streams": self.state.open_streams}
        for name, backend in self.state.registry.backends.items():
            counts[f"{name} in_flight"] = backend.in_flight
            counts[f"{name} gauge"] = self.sample("leanserve_requests_in_flight", variant=name)
            counts[f"{name} waiting"] = len(backend.stats.waiting)
        return counts


def gateway(home: Path, engines: dict[str, FakeVllm], **settings) -> Harness:
    """The gateway's inference routes over one backend per fake engine, routed by the quality
    policy: BASE first, then VARIANT."""
    config = load_settings(home=home, variants=[], **settings)
    metrics = Metrics()
    registry = Registry(BASE)
    for name, fake in engines.items():
        url = f"http://fake-{name.replace(':', '-')}"
        engine = RemoteEngine(name, url)
        engine.state = EngineState.READY  # no health polls: the fake is always up
        client = EngineClient(url, 30.0, transport=fake.transport())
        registry.add(Backend(name, engine, client, variant=None if name == BASE else "v"))
        metrics.add_variant(name)
    experiments = Experiments.from_settings([], f"sqlite:///{home / 'experiments.db'}", metrics)
    state = AppState(
        config, registry, metrics, experiments, None, Keys([], None), RateLimiter(None)
    )
    app = FastAPI()
    errors.install(app)
    app.include_router(inference_router)
    app.state.leanserve = state
    return Harness(app, state, engines)
