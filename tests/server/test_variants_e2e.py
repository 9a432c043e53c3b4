"""Variants on the fly against real engines: the base serves at once, variants build in the
background with visible progress, get their own vLLM engines, and the router uses them.

Builds use small budgets (few calibration samples, few evaluation windows) to fit CI; the
full-budget numbers are in bench/ and BENCHMARKS.md.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time

import httpx
import pytest

from server.variants.lookup import find_variant
from tests.server.gateway import start_gateway

pytestmark = pytest.mark.slow

ADMIN = "test-admin-key"
SMALL_BUILD = [
    "--calibration-samples", "8", "--eval-windows", "4", "--eval-passages", "20",
    "--chat-prompts", "8", "--chat-max-tokens", "16",
]  # fmt: skip
FLOOR = 0.8


def _chat(gw, model: str, headers: dict | None = None, **extra) -> httpx.Response:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 4,
    }
    return httpx.post(
        f"{gw.url}/v1/chat/completions", json={**body, **extra}, headers=headers, timeout=120
    )


def _variants(gw) -> dict[str, dict]:
    data = httpx.get(f"{gw.url}/v1/variants", timeout=10).json()["data"]
    return {v["id"]: v for v in data}


def _start(home, tmp_path, name: str):
    env = {
        "LEANSERVE_VARIANTS": json.dumps(["w8a8", "prune-0.25"]),
        "LEANSERVE_BUILD_ARGS": json.dumps(SMALL_BUILD),
        "LEANSERVE_BUILD_SPEED": "false",  # CI time: cost falls back to the size ratio
        "LEANSERVE_ROUTING__QUALITY_FLOOR": str(FLOOR),
        "LEANSERVE_AUTH__ADMIN_KEY": ADMIN,
        "LEANSERVE_ROUTING__BREAKER_COOLDOWN_S": "5",
    }
    return start_gateway(home, tmp_path / f"{name}.log", extra_env=env)


@pytest.fixture(scope="module")
def served(home, tmp_path_factory):
    """A gateway whose variants were built on the fly; yields it with what was observed."""
    tmp = tmp_path_factory.mktemp("variants")
    # At least one variant must really be built on the fly here, whatever earlier runs left in
    # the store (w8a8 may be shared with other tests; prune-0.25 is built again).
    while (old := find_variant(home / "variants", "prune-0.25")) is not None:
        shutil.rmtree(old)
    gw = _start(home, tmp, "first")
    seen: dict[str, set] = {"states": set(), "percents": set()}
    try:
        gw.wait_ready()  # the base alone: variants are still building
        served_while_building = _chat(gw, "smollm2-135m-instruct")
        deadline = time.monotonic() + 1500
        while time.monotonic() < deadline:
            variants = _variants(gw)
            for v in variants.values():
                seen["states"].add(v["state"])
                if v["state"] == "building":
                    seen["percents"].add(v["percent"])
            if all(v["state"] in ("ready", "failed") for v in variants.values()):
                break
            time.sleep(1)
        yield gw, seen, served_while_building, tmp
    finally:
        gw.stop()


def test_base_serves_while_variants_build(served):
    gw, seen, first, _ = served
    assert first.status_code == 200
    assert "building" in seen["states"] or "queued" in seen["states"]


def test_variants_become_ready_with_cards(served):
    gw, seen, _, _ = served
    variants = _variants(gw)
    assert variants["w8a8"]["state"] == "ready", variants["w8a8"]
    assert variants["prune-0.25"]["state"] == "ready", variants["prune-0.25"]
    for vid in ("w8a8", "prune-0.25"):
        card = variants[vid]["card"]
        assert card["quality"]["perplexity"] > 0 and 0 < card["quality"]["top1_agreement"] <= 1
    ids = [m["id"] for m in httpx.get(f"{gw.url}/v1/models", timeout=10).json()["data"]]
    assert ids == [
        "smollm2-135m-instruct",
        "smollm2-135m-instruct:w8a8",
        "smollm2-135m-instruct:prune-0.25",
    ]


def test_progress_was_visible(served):
    _, seen, _, _ = served
    # Percentages strictly between 0 and 100 were shown while building.
    assert any(0 < p < 100 for p in seen["percents"]), seen


def test_pinned_reaches_the_variant(served):
    gw, *_ = served
    response = _chat(gw, "smollm2-135m-instruct:w8a8")
    assert response.status_code == 200
    assert response.headers["X-Leanserve-Variant"] == "smollm2-135m-instruct:w8a8"
    assert response.headers["X-Leanserve-Route-Reason"].startswith("pinned")
    assert response.json()["model"] == "smollm2-135m-instruct:w8a8"


def test_quality_picks_the_base(served):
    gw, *_ = served
    response = _chat(gw, "smollm2-135m-instruct", headers={"X-Leanserve-Policy": "quality"})
    assert response.headers["X-Leanserve-Variant"] == "smollm2-135m-instruct"
    assert response.headers["X-Leanserve-Route-Reason"].startswith("quality")


def test_cost_with_a_floor_picks_the_cheapest_qualifying(served):
    gw, *_ = served
    models = {m["id"]: m for m in httpx.get(f"{gw.url}/v1/models", timeout=10).json()["data"]}
    w8a8, pruned = models["smollm2-135m-instruct:w8a8"], models["smollm2-135m-instruct:prune-0.25"]
    # The premise: pruning without healing is cheaper but falls below the floor; w8a8 does not.
    assert pruned["quality"] < FLOOR <= w8a8["quality"], (pruned["quality"], w8a8["quality"])
    assert pruned["speedup"] > 1.0 and w8a8["speedup"] > 1.0
    # As an SDK would send it: a body field through extra_body.
    response = _chat(gw, "smollm2-135m-instruct", leanserve_policy="cost")
    assert response.status_code == 200
    assert response.headers["X-Leanserve-Variant"] == "smollm2-135m-instruct:w8a8"
    assert response.headers["X-Leanserve-Route-Reason"].startswith("cost: cheapest")


def test_unknown_policy_is_a_400(served):
    gw, *_ = served
    response = _chat(gw, "smollm2-135m-instruct", headers={"X-Leanserve-Policy": "fastest"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "leanserve_policy"


def test_admin_endpoints_need_the_admin_key(served):
    gw, *_ = served
    no_key = httpx.post(f"{gw.url}/v1/variants", json={"recipe": "w4a16"}, timeout=10)
    assert no_key.status_code == 401 and no_key.json()["error"]["type"] == "authentication_error"
    wrong = httpx.delete(
        f"{gw.url}/v1/variants/w8a8", headers={"Authorization": "Bearer nope"}, timeout=10
    )
    assert wrong.status_code == 403
    experiment = {"name": "ab", "arms": [{"variant": "smollm2-135m-instruct"}, {"variant": "x"}]}
    assert httpx.post(f"{gw.url}/v1/experiments", json=experiment, timeout=10).status_code == 401


def test_bad_recipe_name_is_refused(served):
    gw, *_ = served
    response = httpx.post(
        f"{gw.url}/v1/variants",
        json={"recipe": "../../etc/passwd"},
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=10,
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "recipe"


def test_failover_when_a_variant_engine_dies(served):
    """Kill the engine the cost policy prefers, under load: requests that had not started
    streaming are served by the next variant; the breaker opens, then closes once it is back."""
    gw, *_ = served
    target = "smollm2-135m-instruct:w8a8"
    pid = gw.engine(target)["pid"]
    outcomes: list[tuple[str, int, bool, bool]] = []  # kind, status, started, error_after_start
    breaker_states: set[str] = set()
    stop = threading.Event()

    def client(i: int) -> None:
        while not stop.is_set():
            body = {
                "model": "smollm2-135m-instruct",
                "messages": [{"role": "user", "content": f"Tell story number {i}."}],
                "max_tokens": 48,
                "leanserve_policy": "cost",
            }
            if i % 4:
                r = httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=120)
                outcomes.append(("plain", r.status_code, False, False))
                continue
            with httpx.stream(
                "POST", f"{gw.url}/v1/chat/completions", json={**body, "stream": True}, timeout=120
            ) as r:
                lines = [line for line in r.iter_lines() if line.startswith("data: ")]
            started = r.status_code == 200 and bool(lines)
            failed_late = any('"error"' in line for line in lines)
            outcomes.append(("stream", r.status_code, started, failed_late))

    def watch() -> None:
        while not stop.is_set():
            breaker_states.add(gw.engine(target)["breaker"])
            time.sleep(0.1)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    threads.append(threading.Thread(target=watch))
    for t in threads:
        t.start()
    time.sleep(3)
    os.kill(pid, signal.SIGKILL)
    time.sleep(8)
    stop.set()
    for t in threads:
        t.join(120)
    assert outcomes, "no request finished"
    # Every request either succeeded, or had started streaming before the engine died.
    for kind, status, started, failed_late in outcomes:
        assert status == 200, (kind, status)
        assert not failed_late or (kind == "stream" and started)
    assert "open" in breaker_states, breaker_states

    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        engine = gw.engine(target)
        if engine["state"] == "ready":
            r = _chat(gw, "smollm2-135m-instruct", leanserve_policy="cost")
            if r.headers.get("X-Leanserve-Variant") == target:
                break
        time.sleep(1)
    assert gw.engine(target)["breaker"] == "closed"
    assert r.headers["X-Leanserve-Variant"] == target


def test_retire_drains_and_removes(served):
    gw, *_ = served
    response = httpx.delete(
        f"{gw.url}/v1/variants/prune-0.25",
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=120,
    )
    assert response.status_code == 200 and response.json()["state"] == "retired"
    assert _chat(gw, "smollm2-135m-instruct:prune-0.25").status_code == 404
    assert "prune-0.25" not in _variants(gw)


def test_restart_reuses_the_store(served, home):
    gw, _, _, tmp = served
    gw.stop()
    again = _start(home, tmp, "second")
    try:
        again.wait_ready()
        started = time.monotonic()
        deadline = started + 900
        while time.monotonic() < deadline:
            variants = _variants(again)
            if all(v["state"] in ("ready", "failed") for v in variants.values()):
                break
            time.sleep(1)
        assert all(v["state"] == "ready" for v in variants.values()), variants
        # Nothing was rebuilt: compress found every variant complete in the store.
        assert all(v["reused"] for v in variants.values() if v["id"] != "base"), variants
    finally:
        again.stop()
