"""A client that disconnects cancels its generation in the engine (streaming or not): vLLM's
running count drops at once instead of after the whole generation."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

import httpx
import pytest

from tests.server.gateway import engine_queues
from tests.server.gateway import wait_engine_running as _wait_running

pytestmark = pytest.mark.slow


def _what_went_wrong(gateway, engine_url: str, sock: socket.socket | None = None) -> str:
    """The failure message: the engine's queues, what the gateway answered the client (if it
    answered at all) and the gateway's log, so a failure on a slow CI machine can be placed."""
    answer = b""
    if sock is not None:
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            answer = sock.recv(2000)
    return (
        f"engine: {engine_queues(engine_url)}; the gateway answered: {answer[:600]!r}\n"
        f"gateway log:\n{gateway.log_tail(30)}"
    )


@pytest.mark.parametrize("stream", [False, True])
def test_disconnect_cancels_generation(gateway, base_model, stream):
    engine_url = gateway.engine(base_model)["url"]
    # Generous: on a slow CPU (float32 on AVX2) a request left by an earlier test may still run.
    assert _wait_running(engine_url, lambda n: n == 0, 120), _what_went_wrong(gateway, engine_url)
    host, port = gateway.url.removeprefix("http://").split(":")
    payload = {
        "model": base_model,
        "messages": [{"role": "user", "content": "Write a very long story."}],
        "max_tokens": 1800,
        "ignore_eos": True,
        "stream": stream,
    }
    body = json.dumps(payload).encode()
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    sock = socket.create_connection((host, int(port)))
    sock.sendall(request)
    # 1,800 tokens take the engine over 20 s even on a fast CPU: once running, it surely
    # still is a second later.
    assert _wait_running(engine_url, lambda n: n >= 1, 60), (
        "the request never started; " + _what_went_wrong(gateway, engine_url, sock)
    )
    time.sleep(1.0)
    sock.close()  # the client goes away
    started = time.monotonic()
    assert _wait_running(engine_url, lambda n: n == 0, 10), (
        "the engine kept generating; " + _what_went_wrong(gateway, engine_url)
    )
    assert time.monotonic() - started < 10
    # And the gateway's own books are balanced.
    metrics = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    in_flight = [
        line for line in metrics.splitlines() if line.startswith("leanserve_requests_in_flight{")
    ]
    assert all(float(line.split()[-1]) == 0 for line in in_flight), in_flight


def test_disconnect_does_not_disturb_other_requests(gateway, base_model):
    results = []

    def ok_request():
        body = {
            "model": base_model,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 8,
        }
        results.append(
            httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=60).status_code
        )

    threads = [threading.Thread(target=ok_request) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [200] * 4
