"""Engines take a key, so nothing on the host or in the cluster can call them around the gateway.

Local engines: each gets its own generated key (vLLM reads VLLM_API_KEY, the same as its
--api-key flag, kept off the command line that `ps` shows every user); the gateway sends it as
a Bearer token on every call to that engine. Remote engines: remote_engine_keys. The real vLLM
refusing a call without the key is in test_engine_key_e2e.py (slow); here a FAKE engine
(tests/server/fake_engine.py, a test double) records what every code path sent.
"""

from __future__ import annotations

import sys
import time

import httpx
import pytest

from server.app import build_registry
from server.app import create_app as create_gateway
from server.backends.engine_process import EngineConfig, EngineProcess
from server.settings import load_settings
from tests.server.fake_engine import FakeEngine, serve_in_thread

BASE = "smollm2-135m-instruct"
KEY = "remote-engine-secret"


def chat(**more) -> dict:
    return {"model": BASE, "messages": [{"role": "user", "content": "hi"}], **more}


def test_every_call_to_a_remote_engine_carries_its_key(tmp_path):
    fake = FakeEngine(api_key=KEY)
    with serve_in_thread(fake.app()) as engine_url:
        settings = load_settings(
            home=tmp_path,
            variants=[],
            remote_engines={BASE: engine_url},
            remote_engine_keys={BASE: KEY},
            metrics_refresh_s=0.2,
        )
        with serve_in_thread(create_gateway(settings)) as url:
            deadline = time.monotonic() + 30
            while httpx.get(f"{url}/ready").status_code != 200:
                assert time.monotonic() < deadline, "the gateway never saw the engine healthy"
                time.sleep(0.1)
            assert httpx.post(f"{url}/v1/chat/completions", json=chat()).status_code == 200
            streamed = httpx.post(f"{url}/v1/chat/completions", json=chat(stream=True))
            assert streamed.status_code == 200 and b"[DONE]" in streamed.content
            # max_tokens near the fake's 256-token window: the context check asks /tokenize.
            long = chat(messages=[{"role": "user", "content": "x" * 100}], max_tokens=200)
            assert httpx.post(f"{url}/v1/chat/completions", json=long).status_code == 200
            deadline = time.monotonic() + 10
            while "/metrics" not in {path for path, _ in fake.seen}:
                assert time.monotonic() < deadline, "the engine's /metrics was never fetched"
                time.sleep(0.1)
    paths = {path for path, _ in fake.seen}
    assert {"/health", "/v1/models", "/tokenize", "/metrics", "/v1/chat/completions"} <= paths
    without = sorted({path for path, auth in fake.seen if auth != f"Bearer {KEY}"})
    assert not without, f"calls without the engine's key: {without}"


def test_a_remote_engine_without_its_key_refuses_the_gateway(tmp_path):
    """The fake acts as vLLM with --api-key: without remote_engine_keys the gateway is refused
    (so the setting is what lets it through above)."""
    fake = FakeEngine(api_key=KEY)
    with serve_in_thread(fake.app()) as engine_url:
        settings = load_settings(home=tmp_path, variants=[], remote_engines={BASE: engine_url})
        with serve_in_thread(create_gateway(settings)) as url:
            deadline = time.monotonic() + 30
            while httpx.get(f"{url}/ready").status_code != 200:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            assert httpx.post(f"{url}/v1/chat/completions", json=chat()).status_code == 401


def test_each_local_engine_gets_its_own_key_off_the_command_line(tmp_path):
    config = EngineConfig(name="m", model="unused", python=sys.executable)
    one, two = EngineProcess(config), EngineProcess(config)
    assert one.api_key and two.api_key and one.api_key != two.api_key
    assert len(one.api_key) >= 32
    assert one.environment()["VLLM_API_KEY"] == one.api_key
    assert one.api_key not in " ".join(config.command(one.port))


def test_the_gateway_client_of_a_local_engine_sends_its_key(tmp_path):
    registry = build_registry(load_settings(home=tmp_path, variants=[]))
    (backend,) = registry.backends.values()
    assert isinstance(backend.engine, EngineProcess)
    assert backend.client.headers["authorization"] == f"Bearer {backend.engine.api_key}"


async def test_a_restarted_engine_keeps_its_key_on_the_new_client(tmp_path):
    registry = build_registry(load_settings(home=tmp_path, variants=[]))
    (backend,) = registry.backends.values()
    backend.engine.on_down()  # what the supervisor calls when the process exits
    assert backend.client.headers["authorization"] == f"Bearer {backend.engine.api_key}"
    await backend.client.aclose()


def test_ready_never_shows_an_engine_key(tmp_path):
    from fastapi.testclient import TestClient

    settings = load_settings(
        home=tmp_path,
        variants=[],
        remote_engines={BASE: "http://127.0.0.1:9"},
        remote_engine_keys={BASE: KEY},
    )
    with TestClient(create_gateway(settings)) as client:
        assert KEY not in client.get("/ready").text


@pytest.mark.parametrize("name", ["other-model", f"{BASE}:w8a8"])
def test_a_key_for_an_engine_that_is_not_remote_is_refused(tmp_path, name):
    with pytest.raises(ValueError, match="remote_engine_keys"):
        load_settings(
            home=tmp_path,
            remote_engines={BASE: "http://127.0.0.1:9"},
            remote_engine_keys={name: KEY},
        )


def test_a_remote_engine_key_from_a_file(tmp_path):
    """How the Helm chart hands the gateway its engines' key: a mounted Secret."""
    (tmp_path / "engine-key").write_text(KEY + "\n")
    settings = load_settings(
        home=tmp_path,
        variants=[],
        remote_engines={BASE: "http://127.0.0.1:9"},
        remote_engine_key_files={BASE: str(tmp_path / "engine-key")},
    )
    (backend,) = build_registry(settings).backends.values()
    assert backend.engine.api_key == KEY
    assert backend.client.headers["authorization"] == f"Bearer {KEY}"
