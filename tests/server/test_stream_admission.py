"""Stream admission and pinned names, fast: the gateway (in this process, on a real socket) in
front of a FAKE engine (tests/server/fake_engine.py, a test double) whose first token comes
late enough for concurrent requests to overlap.

- limits.max_concurrent_streams is enforced when a stream is admitted, not at its first token:
  three concurrent streams under a limit of one give one 200 and two 429.
- The slot is given back exactly once however the stream ends: finished, engine error before
  the first token, engine gone mid-stream, client gone before the first token or mid-stream.
- Pinned names (<base>:base) get the same admission as routed ones: an open breaker, an
  engine being retired or over routing.max_in_flight give 503 + Retry-After.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from server.app import create_app
from server.settings import load_settings
from tests.server.fake_engine import FakeEngine, serve_in_thread

BASE = "smollm2-135m-instruct"
FIRST_TOKEN_S = 1.0


def chat(model: str = BASE, stream: bool = True) -> dict:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        "stream": stream,
    }


@pytest.fixture(scope="module")
def fake() -> FakeEngine:
    return FakeEngine(first_token_delay_s=FIRST_TOKEN_S)


@pytest.fixture(scope="module")
def served(fake, tmp_path_factory):
    with serve_in_thread(fake.app()) as engine_url:
        settings = load_settings(
            home=tmp_path_factory.mktemp("admission"),
            variants=[],
            remote_engines={BASE: engine_url},
            limits={"max_concurrent_streams": 1},
            routing={"max_in_flight": 3},
        )
        app = create_app(settings)
        with serve_in_thread(app) as url:
            deadline = time.monotonic() + 30
            while httpx.get(f"{url}/ready").status_code != 200:
                assert time.monotonic() < deadline, "the fake engine never became ready"
                time.sleep(0.1)
            yield url, app.state.leanserve


@pytest.fixture
def gateway(served, fake):
    url, state = served
    backend = state.registry.backends[BASE]
    fake.mode, fake.first_token_delay_s, fake.token_gap_s = "ok", FIRST_TOKEN_S, 0.0
    backend.breaker.success()
    backend.accepting = True
    yield url, state
    fake.mode, fake.first_token_delay_s, fake.token_gap_s = "ok", FIRST_TOKEN_S, 0.0
    backend.breaker.success()
    backend.accepting = True


def stream_status(url: str, body: dict) -> int:
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30) as r:
        r.read()
        return r.status_code


def wait_released(state, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while state.open_streams != 0 and time.monotonic() < deadline:
        assert state.open_streams >= 0, "a stream slot was given back twice"
        time.sleep(0.02)
    assert state.open_streams == 0, f"{state.open_streams} stream slot(s) never given back"


def test_three_concurrent_streams_with_a_limit_of_one(gateway):
    url, state = gateway
    with ThreadPoolExecutor(3) as pool:
        codes = sorted(pool.map(lambda _: stream_status(url, chat()), range(3)))
    assert codes == [200, 429, 429]
    wait_released(state)


@pytest.mark.parametrize("ending", ["finished", "engine_error", "engine_gone_mid_stream"])
def test_the_slot_is_given_back_once_when_the_engine_ends_it(gateway, fake, ending):
    url, state = gateway
    fake.first_token_delay_s = 0.1
    fake.mode = {"finished": "ok", "engine_error": "error", "engine_gone_mid_stream": "break"}[
        ending
    ]
    status = stream_status(url, chat())
    assert status == (502 if ending == "engine_error" else 200)
    wait_released(state)
    fake.mode = "ok"
    assert stream_status(url, chat()) == 200  # the one slot is free again
    wait_released(state)


def test_the_slot_is_given_back_when_the_client_leaves_before_the_first_token(gateway, fake):
    url, state = gateway
    fake.first_token_delay_s = 1.5
    with pytest.raises(httpx.ReadTimeout):
        stream_status_with_timeout(url, 0.3)
    time.sleep(fake.first_token_delay_s + 0.5)  # the gateway sees the first token, then the gap
    wait_released(state)
    fake.first_token_delay_s = 0.1
    assert stream_status(url, chat()) == 200


def test_the_slot_is_given_back_when_the_client_leaves_mid_stream(gateway, fake):
    url, state = gateway
    fake.first_token_delay_s, fake.token_gap_s, fake.tokens = 0.1, 0.5, 6
    try:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=chat(), timeout=30) as r:
            assert r.status_code == 200
            next(r.iter_raw())  # the first event, then hang up
        wait_released(state)
    finally:
        fake.tokens = 3


def stream_status_with_timeout(url: str, timeout_s: float) -> int:
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=chat(), timeout=timeout_s) as r:
        r.read()
        return r.status_code


def test_a_pinned_name_with_an_open_breaker_is_503(gateway):
    url, state = gateway
    state.registry.backends[BASE].breaker.trip()
    for stream in (False, True):
        r = httpx.post(f"{url}/v1/chat/completions", json=chat(f"{BASE}:base", stream), timeout=30)
        assert r.status_code == 503, r.text
        assert int(r.headers["Retry-After"]) >= 1
        assert r.json()["error"]["code"] == "engine_unavailable"
        assert "breaker open" in r.json()["error"]["message"]


def test_a_pinned_name_of_a_retiring_engine_is_503(gateway):
    url, state = gateway
    state.registry.backends[BASE].accepting = False
    r = httpx.post(f"{url}/v1/chat/completions", json=chat(f"{BASE}:base", False), timeout=30)
    assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1


def test_a_pinned_name_over_max_in_flight_is_503(gateway, fake):
    """routing.max_in_flight is 3: with three requests in flight on the engine, a fourth pinned
    one is refused at once instead of queueing behind them."""
    url, state = gateway
    fake.first_token_delay_s = 1.5
    with ThreadPoolExecutor(3) as pool:
        busy = [
            pool.submit(httpx.post, f"{url}/v1/chat/completions", json=chat(stream=False))
            for _ in range(3)
        ]
        deadline = time.monotonic() + 5
        while state.registry.backends[BASE].in_flight < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        r = httpx.post(f"{url}/v1/chat/completions", json=chat(f"{BASE}:base", False), timeout=30)
        assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
        assert "overloaded" in r.json()["error"]["message"]
        assert [f.result().status_code for f in busy] == [200, 200, 200]
