"""Quality on live traffic, end to end on real vLLM engines: a gateway started as `make serve`
starts it (`leanserve serve`) with a small w8a8 variant and quality.shadow_rate 1.0. Answers
of the base (pinned to it) are read back teacher-forced by the base and by w8a8 after they
were sent, and /v1/variants shows w8a8's live_quality against the base; the metrics carry the
same figures, and once live_min_samples is reached the router says it used the live figure.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.quality.shadow import DROP_REASONS
from tests.server.gateway import start_gateway
from tests.server.test_variants_e2e import SMALL_BUILD

pytestmark = pytest.mark.slow

BASE = "smollm2-135m-instruct"
W8A8 = f"{BASE}:w8a8"
PROMPTS = [
    "Name three colors.",
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "Give me a tip for learning to cook.",
    "Why is the sky blue?",
    "Describe a cat in a few words.",
]
ANSWERS = 14
BUILD_TIMEOUT_S = 1500


def _variants(gw) -> dict[str, dict]:
    data = httpx.get(f"{gw.url}/v1/variants", timeout=10).json()["data"]
    return {v["id"]: v for v in data}


@pytest.fixture(scope="module")
def gw(home, tmp_path_factory):
    env = {
        "LEANSERVE_VARIANTS": json.dumps(["w8a8"]),
        "LEANSERVE_BUILD_ARGS": json.dumps(SMALL_BUILD),  # found in the store when built before
        "LEANSERVE_BUILD_SPEED": "false",
        "LEANSERVE_QUALITY__SHADOW_RATE": "1.0",
        "LEANSERVE_QUALITY__LIVE_MIN_SAMPLES": "10",
    }
    log = tmp_path_factory.mktemp("live-quality") / "gateway.log"
    gateway = start_gateway(home, log, extra_env=env)
    try:
        gateway.wait_ready()
        deadline = time.monotonic() + BUILD_TIMEOUT_S
        while _variants(gateway)["w8a8"]["state"] != "ready":
            assert _variants(gateway)["w8a8"]["state"] != "failed", gateway.log_tail()
            assert time.monotonic() < deadline, "w8a8 not ready in time"
            time.sleep(2)
        yield gateway
    finally:
        gateway.stop()


def test_answers_of_the_base_are_scored_against_w8a8(gw):
    assert _variants(gw)["w8a8"]["live_quality"]["n"] == 0, "nothing scored before traffic"
    for i in range(ANSWERS):
        body = {
            "model": f"{BASE}:base",  # pinned to the base
            "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            "max_tokens": 24,
            "temperature": 0.7,
            "seed": i,
            "stream": i % 2 == 1,  # streamed answers are scored as whole ones are
        }
        r = httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        assert r.headers["X-Leanserve-Variant"] == BASE
    deadline = time.monotonic() + 180
    while (live := _variants(gw)["w8a8"]["live_quality"])["n"] < 10:
        assert time.monotonic() < deadline, (live, _dropped(gw))
        time.sleep(1)
    assert 0.5 <= live["top1_agreement"] <= 1.0, live
    lo, hi = live["ci95"]
    assert lo <= live["top1_agreement"] <= hi and live["kl"] >= 0, live
    assert live["tokens"] >= live["n"] and live["since"] <= time.time()
    assert _variants(gw)["base"]["live_quality"] is None

    print("live_quality of w8a8:", live)
    samples = _samples(gw)
    assert 0.5 <= samples[("leanserve_live_quality", W8A8, "top1_agreement")] <= 1.0, samples
    assert samples[("leanserve_live_quality_samples_total", W8A8, None)] >= 10, samples
    dropped = {k[2]: v for k, v in samples.items() if k[0].endswith("dropped_total")}
    print("dropped:", dropped)
    assert set(dropped) == set(DROP_REASONS), "every reason's series, zeros included"

    # live_min_samples is 10 here: routing now takes the live interval's lower end.
    body = {"model": BASE, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    r = httpx.post(
        f"{gw.url}/v1/chat/completions",
        json=body,
        headers={"X-Leanserve-Policy": "cost"},
        timeout=120,
    )
    assert r.status_code == 200
    assert "w8a8" in r.headers["X-Leanserve-Route-Reason"]
    assert "live lower 95 % bound" in r.headers["X-Leanserve-Route-Reason"], r.headers


def _samples(gw) -> dict[tuple, float]:
    """The gateway's live-quality samples: (name, variant, metric) -> value; dropped counts
    under (name, None, reason)."""
    out = {}
    text = httpx.get(f"{gw.url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("leanserve_live_quality"):
                key = s.labels.get("metric") or s.labels.get("reason")
                out[(s.name, s.labels.get("variant"), key)] = s.value
    return out


def _dropped(gw) -> dict[tuple, float]:
    return {k: v for k, v in _samples(gw).items() if k[0].endswith("dropped_total")}
