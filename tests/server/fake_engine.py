"""A FAKE vLLM engine (a test double, not vLLM) and a way to serve an ASGI app on a real socket
in a thread, for fast tests of the gateway's own logic: stream admission, keys on every engine
call, the metrics cache. The real engine's behaviour is covered by the slow tests.

The fake answers what the gateway asks a vLLM OpenAI server for: /health, /v1/models,
/v1/chat/completions (JSON or SSE, after `first_token_delay_s`), /tokenize and /metrics. Like
vLLM with --api-key it refuses /v1 calls without the key (401). It records the Authorization
header of every call, by path. Its `mode` makes it fail: "error" answers 500, "break" drops the
connection after the first event.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from compress.vllm_command import free_port


@dataclass
class FakeEngine:
    api_key: str | None = None
    first_token_delay_s: float = 0.0
    tokens: int = 3
    token_gap_s: float = 0.0
    mode: str = "ok"  # "ok", "error" (500 before any token), "break" (drop after one event)
    seen: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Authorization)

    def app(self) -> Starlette:
        async def health(request: Request) -> Response:
            self._saw(request)
            return Response(status_code=200)

        async def models(request: Request) -> Response:
            return self._guard(request) or JSONResponse(
                {"data": [{"id": "fake", "max_model_len": 256}]}
            )

        async def tokenize(request: Request) -> Response:
            self._saw(request)  # vLLM 0.32 guards only /v1, /v2, /inference, /cohere
            return JSONResponse({"count": 10})

        async def metrics(request: Request) -> Response:
            self._saw(request)
            return PlainTextResponse("vllm:num_requests_running 0.0\n")

        async def chat(request: Request) -> Response:
            refused = self._guard(request)
            if refused:
                return refused
            body = await request.json()
            await asyncio.sleep(self.first_token_delay_s)
            if self.mode == "error":
                return JSONResponse({"error": {"message": "fake failure"}}, status_code=500)
            if body.get("stream"):
                return StreamingResponse(
                    self._events(body["model"]), media_type="text/event-stream"
                )
            return JSONResponse(
                {
                    "id": "x",
                    "model": body["model"],
                    "choices": [
                        {"index": 0, "message": {"content": "hi"}, "finish_reason": "stop"}
                    ],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
                }
            )

        return Starlette(
            routes=[
                Route("/health", health),
                Route("/v1/models", models),
                Route("/tokenize", tokenize, methods=["POST"]),
                Route("/metrics", metrics),
                Route("/v1/chat/completions", chat, methods=["POST"]),
            ]
        )

    async def _events(self, model: str):
        for i in range(self.tokens):
            chunk = {"model": model, "choices": [{"index": 0, "delta": {"content": f"t{i}"}}]}
            yield f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n".encode()
            if self.mode == "break":
                raise RuntimeError("fake engine dies mid-stream")  # uvicorn drops the connection
            await asyncio.sleep(self.token_gap_s)
        usage = {"prompt_tokens": 5, "completion_tokens": self.tokens, "total_tokens": 8}
        done = {"model": model, "choices": [], "usage": usage}
        yield f"data: {json.dumps(done, separators=(',', ':'))}\n\n".encode()
        yield b"data: [DONE]\n\n"

    def _saw(self, request: Request) -> None:
        self.seen.append((request.url.path, request.headers.get("authorization")))

    def _guard(self, request: Request) -> Response | None:
        self._saw(request)
        if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return JSONResponse({"error": "Unauthorized"}, status_code=401)
        return None


@contextmanager
def serve_in_thread(app, **config) -> Iterator[str]:
    """Serve `app` with uvicorn on a free local port in a thread (lifespan included); yields its
    URL and stops it on exit."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **config)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
