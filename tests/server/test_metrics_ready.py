"""/metrics and /ready when API keys are set, and what a scrape costs the event loop.

An app whose only engine is an unreachable remote URL: no vLLM is needed for any of this.
"""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.metrics import engine_stats
from server.metrics.resources import ResourceCollector
from server.settings import load_settings

BASE = "smollm2-135m-instruct"
DETAILS = {"url", "pid", "error", "restarts", "in_flight", "breaker", "concurrency_limit"}


def settings(tmp_path, **overrides):
    return load_settings(
        home=tmp_path,
        variants=[],
        remote_engines={BASE: "http://127.0.0.1:9"},  # discard port: nothing answers
        **overrides,
    )


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def keyed(tmp_path):
    auth = {"api_keys": ["client-key"], "admin_key": "admin-key", "metrics_key": "scrape-key"}
    with TestClient(create_app(settings(tmp_path, auth=auth))) as client:
        yield client


@pytest.fixture
def api_keys_only(tmp_path):
    with TestClient(create_app(settings(tmp_path, auth={"api_keys": ["client-key"]}))) as client:
        yield client


def test_metrics_needs_a_key_when_api_keys_are_set(api_keys_only):
    """Before: with API keys but no metrics key, /metrics was open to anyone."""
    r = api_keys_only.get("/metrics")
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert r.headers["www-authenticate"] == "Bearer"
    assert api_keys_only.get("/metrics", headers=bearer("nope")).status_code == 401
    assert api_keys_only.get("/metrics", headers=bearer("client-key")).status_code == 200


@pytest.mark.parametrize(
    ("key", "status"),
    [(None, 401), ("nope", 401), ("scrape-key", 200), ("client-key", 200), ("admin-key", 200)],
)
def test_metrics_key_or_an_api_key(keyed, key, status):
    r = keyed.get("/metrics", headers=bearer(key) if key else {})
    assert r.status_code == status
    if status == 200:
        assert "leanserve_requests_total" in r.text or "leanserve_engine_up" in r.text


def test_the_metrics_key_is_no_api_key(keyed):
    assert keyed.get("/v1/models", headers=bearer("scrape-key")).status_code == 401


def test_ready_without_a_key_says_only_ready_and_states(keyed):
    """Before: engine URLs, PIDs and error text for anyone who asked."""
    r = keyed.get("/ready")
    assert r.status_code == 503
    body = r.json()
    assert set(body) == {"ready", "engines"} and body["ready"] is False
    assert body["engines"] == {BASE: {"state": "restarting"}} or set(body["engines"][BASE]) == {
        "state"
    }
    assert "127.0.0.1:9" not in r.text
    wrong = keyed.get("/ready", headers=bearer("nope")).json()
    assert set(wrong["engines"][BASE]) == {"state"}


@pytest.mark.parametrize("key", ["client-key", "admin-key"])
def test_ready_with_a_key_has_the_details(keyed, key):
    engine = keyed.get("/ready", headers=bearer(key)).json()["engines"][BASE]
    assert set(engine) >= DETAILS and engine["url"] == "http://127.0.0.1:9"


def test_ready_of_an_open_gateway_has_the_details(tmp_path):
    with TestClient(create_app(settings(tmp_path))) as client:
        assert set(client.get("/ready").json()["engines"][BASE]) >= DETAILS


async def test_a_scrape_does_no_collection_on_the_event_loop(tmp_path, monkeypatch):
    """The process scan and the engines' /metrics are collected in the background, off the
    loop: a scrape serves what was collected last. Here the scan takes 1 s; before, each scrape
    ran it on the loop, which then answered nothing else for that second."""
    scans: list[int] = []

    def slow_scan(self):
        scans.append(threading.get_ident())
        time.sleep(1.0)
        return {}

    monkeypatch.setattr(ResourceCollector, "_processes_by_variant", slow_scan)
    loop_thread = threading.get_ident()
    app = create_app(settings(tmp_path, metrics_refresh_s=0.2))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            worst_gap, stop = 0.0, asyncio.Event()

            async def ticker():
                nonlocal worst_gap
                while not stop.is_set():
                    before = time.monotonic()
                    await asyncio.sleep(0.01)
                    worst_gap = max(worst_gap, time.monotonic() - before)

            ticking = asyncio.create_task(ticker())
            started = time.monotonic()
            for _ in range(5):
                r = await client.get("/metrics")
                assert r.status_code == 200
            scrapes_s = time.monotonic() - started
            await asyncio.sleep(1.5)  # a background scan or two meanwhile
            stop.set()
            await ticking
    assert scans, "the resource scan never ran"
    assert loop_thread not in scans, "the scan ran on the event loop"
    assert worst_gap < 0.5, f"the loop stalled for {worst_gap:.2f} s"
    assert scrapes_s < 0.9, f"5 scrapes took {scrapes_s:.2f} s: they waited for a scan"


async def test_engine_stats_are_fetched_in_the_background(tmp_path, monkeypatch):
    fetched = asyncio.Event()

    async def refresh(registry, metrics, timeout_s: float = 1.0):
        fetched.set()

    monkeypatch.setattr(engine_stats, "refresh", refresh)
    app = create_app(settings(tmp_path, metrics_refresh_s=0.2))
    async with app.router.lifespan_context(app):
        await asyncio.wait_for(fetched.wait(), 5)  # without any scrape
