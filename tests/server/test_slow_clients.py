"""Slow and oversized clients, over real sockets against a real `leanserve serve` process.

Its only engine is a remote URL where nothing listens, so it starts no vLLM: these limits act
before any engine is involved. The deadlines are set to 2 s here (10 s and 30 s by default).
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import time

import httpx
import pytest

from tests.server.gateway import Gateway, start_gateway, wait_health

BASE = "smollm2-135m-instruct"
DEADLINE_S = 2.0
MAX_BODY = 4096
MAX_CONNECTIONS = 8
MAX_HEADER_BYTES = 16 * 1024  # the default


@pytest.fixture(scope="module")
def gw(tmp_path_factory) -> Gateway:
    home = tmp_path_factory.mktemp("slow-clients")
    env = {
        "LEANSERVE_VARIANTS": "[]",
        "LEANSERVE_REMOTE_ENGINES": json.dumps({BASE: "http://127.0.0.1:9"}),  # nothing there
        "LEANSERVE_LIMITS__HEADER_TIMEOUT_S": str(DEADLINE_S),
        "LEANSERVE_LIMITS__BODY_TIMEOUT_S": str(DEADLINE_S),
        "LEANSERVE_LIMITS__MAX_BODY_BYTES": str(MAX_BODY),
        "LEANSERVE_LIMITS__MAX_CONNECTIONS": str(MAX_CONNECTIONS),
    }
    gateway = start_gateway(home, home / "gateway.log", extra_env=env)
    try:
        wait_health(gateway.url, gateway.proc, timeout_s=60)
        yield gateway
    finally:
        gateway.stop()


def connect(gw: Gateway) -> socket.socket:
    host, port = gw.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def readable(sock: socket.socket, wait_s: float = 0.0) -> bool:
    return bool(select.select([sock], [], [], wait_s)[0])


def read_until_closed(sock: socket.socket, timeout_s: float) -> tuple[bytes, bool]:
    """Everything the server sends, and whether it closed the connection within timeout_s."""
    data, deadline = b"", time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not readable(sock, 0.1):
            continue
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def trickle(sock: socket.socket, data: bytes, every_s: float, for_s: float) -> tuple[bytes, float]:
    """Send `data` one byte every `every_s` until the server answers or closes (or `for_s`
    passes); returns what it sent back and when the connection closed (inf: still open)."""
    started = time.monotonic()
    for byte in data:
        if time.monotonic() - started > for_s:
            break
        if readable(sock):
            break
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            break
        time.sleep(every_s)
    reply, closed = read_until_closed(sock, max(0.5, for_s - (time.monotonic() - started)))
    return reply, (time.monotonic() - started) if closed else float("inf")


def status_of(reply: bytes) -> int | None:
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else None


def body_of(reply: bytes) -> dict:
    return json.loads(reply.split(b"\r\n\r\n", 1)[1])


def test_health_answers_without_an_engine(gw):
    assert httpx.get(f"{gw.url}/health").json() == {"status": "ok"}


def test_slow_headers_are_cut_off_at_the_deadline(gw):
    """One header byte every 0.5 s: the connection is answered 408 and closed at the header
    deadline, however steadily the bytes come (before: it stayed open as long as they came)."""
    request = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    with connect(gw) as sock:
        reply, closed_after = trickle(sock, request, every_s=0.5, for_s=DEADLINE_S + 6)
    assert closed_after < DEADLINE_S + 3, f"still open after {DEADLINE_S + 6} s"
    assert status_of(reply) == 408, reply[:200]
    assert body_of(reply)["error"]["code"] == "header_timeout"


def test_an_idle_connection_is_closed_at_the_header_deadline(gw):
    with connect(gw) as sock:
        started = time.monotonic()
        _, closed = read_until_closed(sock, DEADLINE_S + 6)
        assert closed and time.monotonic() - started < DEADLINE_S + 3


def test_slow_body_is_cut_off_at_the_deadline(gw):
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n"
    )
    with connect(gw) as sock:
        sock.sendall(head)
        reply, closed_after = trickle(sock, b"{" + b" " * 999, every_s=0.5, for_s=DEADLINE_S + 6)
    assert closed_after < DEADLINE_S + 3, f"still open after {DEADLINE_S + 6} s"
    assert status_of(reply) == 408, reply[:200]
    assert body_of(reply)["error"]["code"] == "body_timeout"


def test_oversized_chunked_body_is_413_and_closed(gw):
    """No Content-Length, so the size shows only as the chunks come: 413 in OpenAI's shape,
    and the connection is closed, so the client cannot go on sending (before: 400 'error
    parsing the body', connection left open)."""
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"400\r\n" + b" " * 1024 + b"\r\n"
    with connect(gw) as sock:
        sock.sendall(head)
        for _ in range(64):  # 64 KiB, far over the 4 KiB limit; stop once the server answers
            if readable(sock, 0.05):
                break
            try:
                sock.sendall(chunk)
            except OSError:
                break
        reply, closed = read_until_closed(sock, 5)
    assert status_of(reply) == 413, reply[:200]
    assert body_of(reply)["error"]["code"] == "body_too_large"
    assert closed, "the connection stayed open after the 413"


def test_declared_oversized_body_is_413_before_it_is_read(gw):
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 10000000\r\n\r\n"
    )
    with connect(gw) as sock:
        sock.sendall(head)
        reply, closed = read_until_closed(sock, 5)
    assert status_of(reply) == 413 and closed


def test_a_chunked_body_within_the_limit_reaches_the_app(gw):
    """The body limits buffer the body and hand it on whole: the request is routed (503: no
    engine answers) rather than refused."""
    payload = json.dumps(
        {"model": BASE, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    ).encode()

    def chunks():
        yield payload[:10]
        yield payload[10:]

    response = httpx.post(
        f"{gw.url}/v1/chat/completions",
        content=chunks(),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "engine_unavailable"


def test_headers_over_the_limit_are_431_and_closed(gw):
    request = (
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-User-Id: "
        + b"u" * (2 * MAX_HEADER_BYTES)
        + b"\r\n\r\n"
    )
    with connect(gw) as sock:
        sock.sendall(request)
        reply, closed = read_until_closed(sock, 5)
    assert status_of(reply) == 431, reply[:200]
    assert body_of(reply)["error"]["code"] == "headers_too_large"
    assert closed


def test_an_8_mb_header_is_refused_before_it_is_read(gw):
    """An 8 MB X-User-Id: the server stops reading it (431 and close) after the limit instead
    of holding it in memory (before: it was read whole and the request served)."""
    sent, reply = 0, b""
    with connect(gw) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-User-Id: ")
        piece = b"u" * 65536
        while sent < 8 * 1024 * 1024:
            if readable(sock, 0.01):
                break
            try:
                sock.sendall(piece)
            except OSError:  # the server closed: reset or broken pipe
                break
            sent += len(piece)
        with contextlib.suppress(OSError):
            if sent >= 8 * 1024 * 1024:  # all of it was taken: end the request, see the answer
                sock.sendall(b"\r\n\r\n")
            reply += read_until_closed(sock, 5)[0]
    assert sent < 1024 * 1024, f"the server read {sent} bytes of headers: {reply[:40]!r}"
    assert status_of(reply) in (431, None), reply[:200]


def test_open_connections_are_capped(gw):
    """With max_connections reached (clients that connect and say nothing), a new request is
    refused with 503 at once; once they are gone, requests are served again."""
    idle = [connect(gw) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.2)
        refused = httpx.get(f"{gw.url}/health", timeout=5)
        assert refused.status_code == 503
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.5)
    assert httpx.get(f"{gw.url}/health", timeout=5).status_code == 200
