"""Limits at the HTTP layer against slow and oversized clients: a deadline and a size cap for a
request's headers (408 / 431), a deadline and a size cap for its body (408 / 413). Each refusal
closes the connection, so the client cannot go on sending; the body is an OpenAI-shaped error.

What uvicorn (0.54) offers is used: `limit_concurrency` caps open connections and requests in
progress (503 + close; limits.max_connections, set in cli.py), and `timeout_keep_alive` closes
connections idle between requests. What it does not offer with httptools, its parser here:
a header size limit (`h11_max_incomplete_event_size` exists for h11 only) and deadlines for
headers and body (uvicorn issue #157 lists both as not done). The keep-alive timer is no header
deadline: any byte received cancels it, so a byte every few seconds held a connection for good.
So the header limits are a small subclass of uvicorn's httptools protocol (the only layer that
sees a request before its headers are complete), and the body limits are pure ASGI middleware.
"""

from __future__ import annotations

import asyncio
import http
import json

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from server.errors import error_body


def _error_json(message: str, code: str) -> bytes:
    return json.dumps(error_body(message, "invalid_request_error", None, code)).encode()


def _refusal(status: int, message: str, code: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    body = _error_json(message, code)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),  # uvicorn closes the connection once this response is sent
    ]
    return headers, body


async def refuse(send: Send, status: int, message: str, code: str) -> None:
    """Answer an ASGI request with an error and close its connection."""
    headers, body = _refusal(status, message, code)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline and a header size cap.

    The deadline runs from the accept (first request) or a request's first byte (later ones on
    a kept-alive connection) to the end of its headers, however steadily bytes arrive. The size
    counts what arrives while headers are incomplete, so a huge header is refused after
    `max_header_bytes` rather than read whole into memory; a pipelined request that shares a
    read with the end of the previous one counts those bytes too (pipelining is rare).
    """

    header_timeout_s: float = 10.0
    max_header_bytes: int = 16 * 1024

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_bytes = 0
        self._awaiting_headers = True
        self._header_deadline: asyncio.TimerHandle | None = None
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._awaiting_headers and not self.transport.is_closing():
            self._header_bytes += len(data)
            if self._header_bytes > self.max_header_bytes:
                self._refuse_raw(431, self._too_large_message(), "headers_too_large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._awaiting_headers = True
        self._arm_header_deadline()

    def on_headers_complete(self) -> None:
        self._cancel_header_deadline()
        self._awaiting_headers = False
        self._header_bytes = 0
        size = len(self.url) + sum(len(name) + len(value) for name, value in self.headers)
        if size <= self.max_header_bytes:
            return super().on_headers_complete()
        # Headers that arrived whole in one read: answer through a stand-in app, as uvicorn
        # itself does for limit_concurrency; the parser goes on undisturbed.
        app, self.app = self.app, _refusing_app(431, self._too_large_message(), "headers_too_large")
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def _too_large_message(self) -> str:
        return f"Request headers over {self.max_header_bytes} bytes."

    def _arm_header_deadline(self) -> None:
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(
                self.header_timeout_s, self._headers_too_slow
            )

    def _cancel_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            message = f"Request headers not complete within {self.header_timeout_s:g} s."
            self._refuse_raw(408, message, "header_timeout")

    def _refuse_raw(self, status: int, message: str, code: str) -> None:
        """Answer before any ASGI cycle exists for the request, and close."""
        if self.cycle is None or self.cycle.response_complete:
            # (A response still going out for a pipelined request is cut off instead.)
            headers, body = _refusal(status, message, code)
            head = f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n".encode()
            head += b"".join(name + b": " + value + b"\r\n" for name, value in headers)
            self.transport.write(head + b"\r\n" + body)
        self.transport.close()


def _refusing_app(status: int, message: str, code: str) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await refuse(send, status, message, code)

    return app


def protocol_class(header_timeout_s: float, max_header_bytes: int) -> type[HttpToolsProtocol]:
    """The protocol uvicorn is started with (`http=`), with these limits."""
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {"header_timeout_s": header_timeout_s, "max_header_bytes": max_header_bytes},
    )


class BodyLimits:
    """Pure ASGI middleware: reads a request's whole body before the app sees it, within
    `timeout_s` and `max_bytes`, then hands it on in one message.

    Too slow: 408; too large (a declared Content-Length at once, a chunked body as soon as it
    passes the cap): 413; both close the connection. The API's bodies are JSON documents that
    the app reads whole anyway. Refusing here, not from inside the app's receive, matters: an
    exception raised there reached FastAPI's body parsing, which answered 400 and kept the
    connection open.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float):
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = f"Request body over {self.max_bytes} bytes."
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await refuse(send, 413, too_large, "body_too_large")
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.timeout_s):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":
                        return  # the client left before sending its body: no one to answer
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_bytes:
                        return await refuse(send, 413, too_large, "body_too_large")
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            message = f"Request body not complete within {self.timeout_s:g} s."
            return await refuse(send, 408, message, "body_timeout")
        whole = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay() -> dict:
            # The body once, then the connection's own messages (a disconnect, for streams).
            return whole.pop() if whole else await receive()

        await self.app(scope, replay, send)
