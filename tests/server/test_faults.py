"""Faults that must end in a clear error and an intact store, while the server keeps serving:
the store's disk filling up during a variant build."""

from __future__ import annotations

import json
import os
import subprocess
import time

import httpx
import pytest

from tests.server.gateway import start_gateway
from tests.server.test_variants_e2e import SMALL_BUILD

pytestmark = pytest.mark.slow


@pytest.fixture
def small_store(home, tmp_path):
    """A home whose variant store is a 40 MB tmpfs: too small for any variant of the model."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    small = tmp_path / "home"
    (small / "variants").mkdir(parents=True)
    (small / "models").symlink_to(home / "models")  # the base, without converting it again
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(small / "variants")], check=True
    )
    try:
        yield small
    finally:
        subprocess.run(["umount", "-l", str(small / "variants")], check=False)


def test_disk_full_during_a_build(small_store, tmp_path):
    env = {
        "LEANSERVE_VARIANTS": json.dumps(["prune-0.25"]),
        "LEANSERVE_BUILD_ARGS": json.dumps(SMALL_BUILD),
        "LEANSERVE_BUILD_SPEED": "false",  # CI time: cost falls back to the size ratio
    }
    gw = start_gateway(small_store, tmp_path / "gateway.log", extra_env=env)
    try:
        gw.wait_ready()
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            variant = httpx.get(f"{gw.url}/v1/variants/prune-0.25", timeout=10).json()
            if variant["state"] in ("failed", "ready"):
                break
            time.sleep(1)
        assert variant["state"] == "failed", variant
        assert "space" in variant["error"].lower(), variant["error"]
        # The server keeps serving what it can.
        body = {
            "model": "smollm2-135m-instruct",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 4,
        }
        assert httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=60).status_code == 200
        metrics = httpx.get(f"{gw.url}/metrics", timeout=10).text
        assert (
            'leanserve_build_failures_total{variant="smollm2-135m-instruct:prune-0.25"} 1.0'
            in metrics
        )
    finally:
        gw.stop()
    # Nothing half-written is left in the store.
    leftovers = [p for p in (small_store / "variants").rglob("*") if p.is_file()]
    assert leftovers == []
