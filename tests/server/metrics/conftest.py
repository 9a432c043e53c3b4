from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest


@pytest.fixture
def engine_registry():
    """Make a stand-in for the gateway's backend registry whose engines are real processes,
    each leading its own process group as vLLM engines do (backends/engine_process.py): idle
    Python processes, so the collector finds, measures and maps them by group like engines."""
    procs: list[subprocess.Popen] = []

    def make(*variants: str) -> SimpleNamespace:
        backends = {}
        for variant in variants:
            proc = subprocess.Popen(
                [sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True
            )
            procs.append(proc)
            backends[variant] = SimpleNamespace(engine=SimpleNamespace(pid=proc.pid, restarts=0))
        return SimpleNamespace(backends=backends)

    yield make
    for proc in procs:
        proc.kill()
        proc.wait()
