"""SIGTERM drains in-flight requests within the grace period and leaves no orphan process."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx
import pytest

from tests.server.gateway import start_gateway
from tests.server.test_engine_crash import _group_alive

pytestmark = pytest.mark.slow


def test_sigterm_drains_and_leaves_no_orphans(home, tmp_path, base_model):
    gw = start_gateway(
        home,
        tmp_path / "gateway.log",
        extra_env={"LEANSERVE_DRAIN_TIMEOUT_S": "60", "LEANSERVE_VARIANTS": "[]"},
    )
    try:
        gw.wait_ready()
        engine = gw.engine(base_model)
        first_chunk = threading.Event()
        outcome: dict = {}

        def stream() -> None:
            body = {
                "model": base_model,
                "messages": [{"role": "user", "content": "Tell a story."}],
                "max_tokens": 48,
                "temperature": 0,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            lines = []
            with httpx.stream("POST", f"{gw.url}/v1/chat/completions", json=body, timeout=120) as r:
                for line in r.iter_lines():
                    if line:
                        lines.append(line)
                        first_chunk.set()
            outcome["lines"] = lines

        streamer = threading.Thread(target=stream)
        streamer.start()
        assert first_chunk.wait(60)
        gw.proc.terminate()  # SIGTERM while the stream is in flight
        time.sleep(0.5)
        with pytest.raises(httpx.ConnectError):  # no new work is taken
            httpx.get(f"{gw.url}/health", timeout=5)
        streamer.join(120)
        # uvicorn re-raises the captured SIGTERM after its clean shutdown, hence -SIGTERM.
        assert gw.proc.wait(90) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in gw.log_tail()
    finally:
        gw.stop()

    lines = outcome["lines"]
    assert lines[-1] == "data: [DONE]"
    usage = json.loads(lines[-2][6:])["usage"]
    assert usage["completion_tokens"] == 48 or '"finish_reason":"stop"' in "".join(lines)
    deadline = time.monotonic() + 10
    while _group_alive(engine["pid"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _group_alive(engine["pid"]), "engine processes outlived the gateway"
    with pytest.raises(ProcessLookupError):
        os.kill(engine["pid"], 0)
