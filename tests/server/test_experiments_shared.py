"""Experiments shared by gateway replicas, end to end: two gateway processes on one experiment
store, routing by URL (remote_engines) to a real vLLM engine started with `leanserve engine`,
as in test_two_gateways_ab.py.

- An experiment created on gateway A is listed and routed by on gateway B; pausing it on B
  pauses it on A, within a few seconds (each gateway reloads the store every second).
- Guardrail: an experiment's second arm is served by a deliberately broken engine (fault
  injection: it answers /health but 500 to every completion, so each request falls back to
  the control's variant). With an error_rate guardrail of margin 0.05 the arm is stopped
  automatically, every later request goes to the control, and the report, the metrics and the
  gateway's log say why.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import yaml

from tests.server.gateway import free_port, start_engine, start_gateway, wait_health
from tests.server.test_two_gateways_ab import ADMIN, _admin

pytestmark = pytest.mark.slow

BASE = "smollm2-135m-instruct"
BROKEN = f"{BASE}:broken"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


class BrokenEngine(BaseHTTPRequestHandler):
    """Fault injection, not a stand-in for vLLM: an engine that is up (/health, /v1/models) but
    fails every generation with a 500."""

    completions = 0

    def do_GET(self):
        if self.path == "/health":
            self._send(200, b"")
        elif self.path == "/v1/models":
            self._send(200, json.dumps({"data": [{"id": BROKEN, "max_model_len": 2048}]}).encode())
        else:
            self._send(404, b"{}")

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        type(self).completions += 1
        error = {"error": {"message": "injected failure", "type": "server_error"}}
        self._send(500, json.dumps(error).encode())

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def broken_engine():
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), BrokenEngine)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


@pytest.fixture(scope="module")
def gateways(home, tmp_path_factory, broken_engine):
    tmp = tmp_path_factory.mktemp("shared")
    engine, url = start_engine(home, tmp / "engine.log", None, {"VLLM_CPU_OMP_THREADS_BIND": "1"})
    config = {
        "variants": [],
        "remote_engines": {BASE: url, BROKEN: broken_engine},
        "experiment_store": f"sqlite:///{tmp / 'experiments.db'}",
        "experiment_refresh_s": 1.0,
        "experiment_guardrail_check_s": 1.0,
        "auth": {"admin_key": ADMIN},
        # The broken arm's circuit breaker lets it be tried again after a second (not 30 s), so
        # its failures add up in seconds; while it is open, its users are not in the experiment.
        "routing": {"breaker_cooldown_s": 1.0},
    }
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    started = []
    try:
        wait_health(url, engine)
        for i in range(2):
            gw = start_gateway(
                home, tmp / f"gateway{i}.log", args=["--config", str(tmp / "config.yaml")]
            )
            started.append(gw)
        for gw in started:
            gw.wait_ready()
        yield started
    finally:
        for gw in started:
            gw.stop()
        engine.terminate()
        engine.wait(30)


def _ask(gw, user: str) -> httpx.Response:
    body = {"model": BASE, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    r = httpx.post(
        f"{gw.url}/v1/chat/completions", json=body, headers={"X-User-Id": user}, timeout=120
    )
    assert r.status_code == 200, r.text
    return r


def _wait(predicate, timeout_s: float, what: str) -> float:
    """Seconds until `predicate()` held."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout_s, f"not within {timeout_s} s: {what}"
        time.sleep(0.1)
    return time.monotonic() - start


def _get(gw, path: str) -> dict:
    r = httpx.get(f"{gw.url}{path}", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def _names(gw) -> set[str]:
    return {e["name"] for e in _get(gw, "/v1/experiments")["data"]}


def test_created_on_one_gateway_routes_on_the_other_and_pause_reaches_back(gateways):
    a, b = gateways
    experiment = {
        "name": "shared",
        "arms": [{"name": "a1", "variant": BASE}, {"name": "a2", "variant": BASE}],
    }
    created = httpx.post(f"{a.url}/v1/experiments", json=experiment, headers=AUTH, timeout=30)
    assert created.status_code == 201, created.text

    seen = _wait(lambda: "shared" in _names(b), 5, "gateway B lists the experiment created on A")
    print(f"B listed the experiment {seen:.2f} s after A created it")
    arms = {}
    for i in range(20):
        header = _ask(b, f"u{i}").headers["X-Leanserve-Experiment"]
        assert header.startswith("shared/"), header
        arms[f"u{i}"] = header.split("/", 1)[1]
        assert _ask(a, f"u{i}").headers["X-Leanserve-Experiment"] == header  # sticky across
    assert set(arms.values()) == {"a1", "a2"}

    _admin(b, "/v1/experiments/shared/pause")
    start = time.monotonic()
    _wait(
        lambda: _get(a, "/v1/experiments/shared")["state"] == "paused",
        5,
        "A shows the experiment B paused",
    )
    _wait(
        lambda: "X-Leanserve-Experiment" not in _ask(a, "u0").headers,
        5,
        "A stops assigning",
    )
    print(f"A stopped assigning {time.monotonic() - start:.2f} s after B paused")
    assert _get(a, "/v1/experiments/shared")["state_reason"] == "pause through the API"
    _admin(a, "/v1/experiments/shared/stop")  # out of the way of the next test's experiment


def test_guardrail_stops_a_failing_arm(gateways):
    a, b = gateways
    experiment = {
        "name": "guarded",
        "arms": [{"variant": BASE}, {"variant": BROKEN}],
        "guardrails": [{"metric": "error_rate", "margin": 0.05}],
    }
    created = httpx.post(f"{a.url}/v1/experiments", json=experiment, headers=AUTH, timeout=30)
    assert created.status_code == 201, created.text
    _wait(lambda: "guarded" in _names(b), 5, "B sees it")

    def stopped() -> bool:
        report = _get(b, "/v1/experiments/guarded/report")
        return report["arms"].get(BROKEN, {}).get("guardrail", {}).get("stopped", False)

    sent = 0
    start = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        while not stopped():
            assert time.monotonic() - start < 120, "the failing arm was not stopped in 120 s"
            batch = range(sent, sent + 20)
            list(pool.map(lambda i: _ask((a, b)[i % 2], f"g{i}"), batch))
            sent += len(batch)
    print(f"arm stopped after {sent} requests, {time.monotonic() - start:.1f} s")
    assert BrokenEngine.completions >= 10  # the arm was really tried, and failed

    # Every later request, on either gateway, goes to the control.
    for i in range(40):
        r = _ask((a, b)[i % 2], f"later-{i}")
        assert r.headers["X-Leanserve-Experiment"] == f"guarded/{BASE}", dict(r.headers)
        assert r.headers["X-Leanserve-Variant"] == BASE

    report = _get(a, "/v1/experiments/guarded/report")
    guardrail = report["arms"][BROKEN]["guardrail"]
    assert guardrail["stopped"] and guardrail["metric"] == "error_rate"
    assert "error rate" in guardrail["reason"] and guardrail["low"] > 0.05
    assert report["guardrails"] == [
        {"metric": "error_rate", "margin": 0.05, "stopped_arms": [BROKEN]}
    ]
    assert report["state"] == "running" and "control" in report["state_reason"]
    print("report:", json.dumps(guardrail))
    for gw in (a, b):
        metrics = httpx.get(f"{gw.url}/metrics", timeout=10).text
        series = (
            f'leanserve_experiment_arm_stopped{{arm="{BROKEN}",experiment="guarded",'
            'metric="error_rate"} 1.0'
        )
        assert series in metrics
    logs = [gw.log_path.read_text() for gw in (a, b)]
    line = f"experiment guarded: arm {BROKEN} stopped by its error_rate guardrail"
    warnings = [x for log in logs for x in log.splitlines() if line in x]
    assert warnings and "WARNING" in warnings[0] and guardrail["reason"] in warnings[0]
