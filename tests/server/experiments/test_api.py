"""/v1/experiments over HTTP, backed by the shared store: two apps (two gateway replicas, no
engines) on one SQLite file. Writes on one show on the other after a refresh; errors keep
OpenAI's shape (404 unknown, 409 exists / stopped for good, 400 bad input)."""

from __future__ import annotations

from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI

from server import errors
from server.experiments.router import router
from server.limits import RateLimiter
from server.state import Keys
from tests.server.experiments.helpers import BASE, W8A8, replica

ADMIN = {"Authorization": "Bearer admin"}
BODY = {
    "name": "ab",
    "arms": [{"variant": BASE}, {"variant": W8A8}],
    "guardrails": [{"metric": "error_rate", "margin": 0.05}],
}


def _app(experiments) -> FastAPI:
    app = FastAPI()
    errors.install(app)
    app.include_router(router)
    app.state.leanserve = SimpleNamespace(
        experiments=experiments,
        metrics=experiments.metrics,
        keys=Keys([], "admin"),
        variants=SimpleNamespace(known_names=lambda: {BASE, W8A8}),
        limiter=RateLimiter(None),  # admin writes and feedback pass the rate limit
        auth_failures=RateLimiter(None),
    )
    return app


@pytest.fixture
async def clients(tmp_path):
    replicas = [replica(tmp_path / "shared.db") for _ in range(2)]
    clients = []
    for r in replicas:
        await r.start()
        transport = httpx.ASGITransport(app=_app(r))
        clients.append(httpx.AsyncClient(transport=transport, base_url="http://gw"))
    try:
        yield clients, replicas
    finally:
        for client, r in zip(clients, replicas, strict=True):
            await client.aclose()
            await r.stop()


def _error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code


async def test_create_list_pause_across_replicas(clients):
    (a, b), (_, replica_b) = clients
    created = await a.post("/v1/experiments", json=BODY, headers=ADMIN)
    assert created.status_code == 201, created.text
    assert created.json()["guardrails"] == BODY["guardrails"]
    assert created.json()["arms"][1]["guardrail"] == {"stopped": False}
    _error(await a.post("/v1/experiments", json=BODY, headers=ADMIN), 409, "exists")

    await replica_b.refresh()
    listed = (await b.get("/v1/experiments")).json()["data"]
    assert [(e["name"], e["state"], e["version"]) for e in listed] == [("ab", "running", 1)]
    paused = await b.post("/v1/experiments/ab/pause", headers=ADMIN)
    assert paused.status_code == 200 and paused.json()["state"] == "paused"
    assert paused.json()["version"] == 2
    assert (await b.get("/v1/experiments/ab")).json()["state"] == "paused"

    _error(await a.get("/v1/experiments/nope"), 404, "not_found")
    _error(await a.post("/v1/experiments/nope/pause", headers=ADMIN), 404, "not_found")
    _error(await a.post("/v1/experiments/ab/explode", headers=ADMIN), 404, "not_found")
    assert (await a.post("/v1/experiments/ab/stop", headers=ADMIN)).status_code == 200
    _error(await b.post("/v1/experiments/ab/resume", headers=ADMIN), 409, "stopped")
    report = (await b.get("/v1/experiments/ab/report")).json()
    assert report["state"] == "stopped" and report["guardrails"][0]["stopped_arms"] == []


async def test_bad_definitions_are_400(clients):
    (a, _), _ = clients
    for body in (
        {**BODY, "guardrails": [{"metric": "p99", "margin": 0.1}]},
        {**BODY, "ramp": {"steps": [0.5, 0.1], "step_s": 10}},
        {**BODY, "arms": [{"variant": BASE}, {"variant": "unknown"}]},
    ):
        response = await a.post("/v1/experiments", json=body, headers=ADMIN)
        assert response.status_code == 400, response.text
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
