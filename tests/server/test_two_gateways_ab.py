"""Beyond one machine, on loopback: two gateway processes route by URL to separate engine
processes, and run A/B experiments whose sticky assignment agrees across the gateways.

1,000 simulated users, each sending one request through each gateway, with a planted feedback
difference between the arms: assignment is sticky across gateways, the split is within 3 points
of the weights, the report finds the planted difference (p < 0.05) and finds none in an A/A
run, and its statistics agree with scipy computed straight from the outcome database.
"""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import yaml
from scipy import stats as sps

from tests.server.gateway import REPO, start_engine, start_gateway, wait_health
from tests.server.test_variants_e2e import SMALL_BUILD

pytestmark = pytest.mark.slow

BASE = "smollm2-135m-instruct"
W8A8 = f"{BASE}:w8a8"
ADMIN = "ab-admin"
USERS = 1000
PLANTED = 0.3  # feedback points the treatment arm gets on top of the control's


@pytest.fixture(scope="module")
def cluster(home, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster")
    base = json.loads(
        subprocess.run(
            [sys.executable, "-m", "server.basemodel", "--home", str(home)],
            check=True, capture_output=True, text=True, cwd=REPO,
        ).stdout.splitlines()[-1]
    )["source"]  # fmt: skip
    compress_python = str(REPO / ".venv-compress/bin/python")
    subprocess.run(
        [compress_python, "-m", "compress", "build", "--base", base, "--recipe", "w8a8",
         "--store", str(home / "variants"), "--no-bars", *SMALL_BUILD],
        check=True, cwd=REPO, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    engines, urls = [], {}
    for name, recipe, core in ((BASE, None, "0"), (W8A8, "w8a8", "1")):
        log = tmp / f"engine-{core}.log"
        proc, urls[name] = start_engine(home, log, recipe, {"VLLM_CPU_OMP_THREADS_BIND": core})
        engines.append(proc)
    config = {
        "variants": [],
        "remote_engines": urls,
        "experiment_store": f"sqlite:///{tmp / 'outcomes.db'}",
        "auth": {"admin_key": ADMIN},
        "experiments": [
            {
                "name": "ab",
                "arms": [{"variant": BASE, "weight": 1}, {"variant": W8A8, "weight": 1}],
            },
            {
                "name": "aa",
                "state": "paused",
                "arms": [{"name": "a1", "variant": BASE}, {"name": "a2", "variant": BASE}],
            },
        ],
    }
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    gateways = []
    try:
        for proc, url in zip(engines, urls.values(), strict=True):
            wait_health(url, proc)
        for i in range(2):
            gw = start_gateway(
                home, tmp / f"gateway{i}.log", args=["--config", str(tmp / "config.yaml")]
            )
            gateways.append(gw)
        for gw in gateways:
            gw.wait_ready()
        yield gateways, urls, tmp / "outcomes.db"
    finally:
        for gw in gateways:
            gw.stop()
        for proc in engines:
            proc.terminate()
            proc.wait(30)


def _ask(gw, user: str) -> tuple[str, str]:
    body = {"model": BASE, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    r = httpx.post(
        f"{gw.url}/v1/chat/completions", json=body, headers={"X-User-Id": user}, timeout=120
    )
    assert r.status_code == 200, r.text
    return r.headers["X-Leanserve-Experiment"].split("/", 1)[1], r.headers["X-Request-Id"]


def _feedback(gw, request_id: str, score: float) -> None:
    r = httpx.post(
        f"{gw.url}/v1/feedback", json={"request_id": request_id, "score": score}, timeout=30
    )
    assert r.status_code == 200, r.text


def _admin(gw, path: str) -> None:
    r = httpx.post(f"{gw.url}{path}", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)
    assert r.status_code == 200, r.text


def _run_users(gateways, prefix: str, planted: dict[str, float], seed: int) -> dict[str, str]:
    rng = random.Random(seed)
    scores = {f"{prefix}-{i}": rng.gauss(3.0, 1.0) for i in range(USERS)}

    def user(name: str) -> str:
        first, request_id = _ask(gateways[0], name)
        second, _ = _ask(gateways[1], name)
        assert first == second, f"{name}: {first} on one gateway, {second} on the other"
        _feedback(gateways[1], request_id, scores[name] + planted.get(first, 0.0))
        return first

    with ThreadPoolExecutor(16) as pool:
        arms = list(pool.map(user, scores))
    return dict(zip(scores, arms, strict=True))


def test_gateways_route_to_engines_by_url(cluster):
    gateways, urls, _ = cluster
    for gw in gateways:
        engines = gw.ready_info()["engines"]
        assert {name: e["url"] for name, e in engines.items()} == urls
        assert all(e["pid"] is None for e in engines.values())  # no engine of their own


def test_ab_sticky_split_planted_difference_and_scipy(cluster):
    gateways, _, db = cluster
    arms = _run_users(gateways, "user", {W8A8: PLANTED}, seed=1)
    share = sum(a == W8A8 for a in arms.values()) / USERS
    assert abs(share - 0.5) <= 0.03, share

    report = httpx.get(f"{gateways[0].url}/v1/experiments/ab/report", timeout=60).json()
    treatment = report["arms"][W8A8]
    assert report["arms"][BASE]["n"] + treatment["n"] == 2 * USERS
    assert treatment["vs_control"]["feedback"]["p_value"] < 0.05
    assert treatment["vs_control"]["feedback"]["difference"] > 0
    assert not report["sample_ratio_mismatch"]["mismatch"]

    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT o.arm, o.latency_s, f.score FROM outcomes o"
            " LEFT JOIN feedback f ON f.request_id = o.request_id WHERE o.experiment = 'ab'"
        ).fetchall()
    feedback = {arm: [f for a, _, f in rows if a == arm and f is not None] for arm in (BASE, W8A8)}
    latency = {arm: [x for a, x, _ in rows if a == arm] for arm in (BASE, W8A8)}
    assert len(feedback[BASE]) + len(feedback[W8A8]) == USERS
    welch = sps.ttest_ind(feedback[W8A8], feedback[BASE], equal_var=False)
    assert treatment["vs_control"]["feedback"]["p_value"] == pytest.approx(welch.pvalue, rel=1e-6)
    lat = sps.ttest_ind(latency[W8A8], latency[BASE], equal_var=False)
    assert treatment["vs_control"]["latency_s"]["p_value"] == pytest.approx(lat.pvalue, rel=1e-6)

    # The per-arm figures reach Prometheus too.
    metrics = httpx.get(f"{gateways[0].url}/metrics", timeout=10).text
    assert (
        f'leanserve_experiment_p_value{{arm="{W8A8}",experiment="ab",metric="feedback"}}' in metrics
    )


def test_aa_finds_no_difference(cluster):
    gateways, _, _ = cluster
    for gw in gateways:
        _admin(gw, "/v1/experiments/ab/stop")
        _admin(gw, "/v1/experiments/aa/resume")
    _run_users(gateways, "aa-user", {}, seed=2)
    report = httpx.get(f"{gateways[1].url}/v1/experiments/aa/report", timeout=60).json()
    assert report["arms"]["a2"]["vs_control"]["feedback"]["p_value"] >= 0.05
    assert not report["sample_ratio_mismatch"]["mismatch"]


def test_locked_database_loses_nothing(cluster):
    """Another process holds the SQLite file locked: requests are still served, feedback gets a
    clear 503, and once the lock is gone every outcome is written."""
    gateways, _, db = cluster
    report = httpx.get(f"{gateways[0].url}/v1/experiments/aa/report", timeout=60).json()
    before = sum(a["n"] for a in report["arms"].values())
    locker = sqlite3.connect(db, timeout=1, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        request_ids = [_ask(gateways[0], f"locked-{i}")[1] for i in range(20)]
        r = httpx.post(
            f"{gateways[0].url}/v1/feedback",
            json={"request_id": request_ids[0], "score": 1},
            timeout=60,
        )
        assert r.status_code == 503 and int(r.headers["Retry-After"]) > 0
        assert r.json()["error"]["code"] == "store_unavailable"
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    _feedback(gateways[0], request_ids[0], 1.0)  # the retry the 503 asked for
    report = httpx.get(f"{gateways[0].url}/v1/experiments/aa/report", timeout=60).json()
    assert sum(a["n"] for a in report["arms"].values()) == before + 20
