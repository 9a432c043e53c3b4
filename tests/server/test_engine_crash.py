"""A killed engine: requests fail fast with 503 + Retry-After, the engine comes back, and
later requests succeed."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest

from tests.server.gateway import wait_engine_running

pytestmark = pytest.mark.slow


def _chat(url: str, model: str, **extra) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Count to ten."}], **extra}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)


def test_killed_engine_fails_fast_then_recovers(gateway, base_model):
    assert _chat(gateway.url, base_model, max_tokens=4).status_code == 200
    before = gateway.engine(base_model)
    stream_outcome: dict = {}

    def long_stream() -> None:
        body = {
            "model": base_model,
            "messages": [{"role": "user", "content": "Tell a long story."}],
            "max_tokens": 1500,
            "ignore_eos": True,  # ~30 s of generation: surely running when the engine dies
            "stream": True,
        }
        started = time.monotonic()
        lines: list[str] = []
        try:
            with httpx.stream(
                "POST", f"{gateway.url}/v1/chat/completions", json=body, timeout=60
            ) as r:
                lines += (line for line in r.iter_lines() if line)
            stream_outcome.update(status=r.status_code)
        except httpx.HTTPError as exc:  # kept for the failure message: how the stream broke
            stream_outcome.update(status=None, error=repr(exc))
        stream_outcome.update(lines=lines, seconds=time.monotonic() - started)

    def context() -> str:
        stream = {**stream_outcome, "lines": stream_outcome.get("lines", [])[-3:]}
        return f"stream (last lines): {stream}\nthe gateway's log:\n{gateway.log_tail(60)}"

    streamer = threading.Thread(target=long_stream)
    streamer.start()
    # Kill once the engine itself is generating the stream, not after a guessed delay.
    wait_engine_running(before["url"], lambda n: n >= 1, 30)
    os.kill(before["pid"], signal.SIGKILL)

    started = time.monotonic()
    try:
        response = _chat(gateway.url, base_model, max_tokens=4)
    except httpx.TimeoutException:
        pytest.fail(f"no answer in 30 s to a request for a dead engine; {context()}")
    assert time.monotonic() - started < 5, "a request to a dead engine must fail fast"
    assert response.status_code == 503, f"{response.text}\n{context()}"
    assert int(response.headers["Retry-After"]) > 0
    assert response.json()["error"]["code"] == "engine_unavailable", context()

    streamer.join(30)
    assert not streamer.is_alive(), "a stream on a dead engine must end, not hang"
    # It either failed before its headers (503) or ended with an error event, then [DONE].
    if stream_outcome["status"] == 200:
        assert any('"error"' in line for line in stream_outcome["lines"]), context()
        assert stream_outcome["lines"][-1] == "data: [DONE]", context()
    else:
        assert stream_outcome["status"] == 503, context()

    gateway.wait_ready(timeout_s=900)
    after = gateway.engine(base_model)
    assert after["pid"] != before["pid"]
    assert after["restarts"] >= before["restarts"] + 1
    ok = _chat(gateway.url, base_model, max_tokens=4)
    assert ok.status_code == 200, ok.text
    # Nothing of the killed engine is left: its process group is gone.
    assert not _group_alive(before["pid"])


def _group_alive(pgid: int) -> bool:
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.getpgid(int(pid)) == pgid:
                    return True
            except ProcessLookupError:
                continue
    return False
