"""engine.nice lowers the priority of an engine's compute processes, not of its API server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from server.backends.engine_process import lower_priority_of_workers

# A stand-in for vLLM's process tree: a parent (the API server) whose child (EngineCore) runs a
# second thread (as vLLM's OpenMP threads) and has a child of its own (a worker).
WORKER = "import time; time.sleep(60)"
ENGINE_CORE = (
    "import subprocess, sys, threading, time\n"
    f"subprocess.Popen([sys.executable, '-c', {WORKER!r}])\n"
    "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
    "time.sleep(60)\n"
)
API_SERVER = (
    f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', {ENGINE_CORE!r}])\n"
    "time.sleep(60)\n"
)


def _threads(pid: int) -> list[int]:
    return [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]


def test_every_thread_of_the_workers_gets_the_nice_value_and_the_parent_keeps_its_own():
    parent = subprocess.Popen([sys.executable, "-c", API_SERVER])
    lowered: list[int] = []
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            time.sleep(0.3)
            lowered = lower_priority_of_workers(parent.pid, 7)
            if len(lowered) == 2 and sum(len(_threads(p)) for p in lowered) >= 3:
                break
        assert len(lowered) == 2, lowered
        threads = [tid for pid in lowered for tid in _threads(pid)]
        assert len(threads) >= 3, threads  # the engine core's second thread is there
        assert all(os.getpriority(os.PRIO_PROCESS, tid) == 7 for tid in threads)
        assert os.getpriority(os.PRIO_PROCESS, parent.pid) == os.getpriority(os.PRIO_PROCESS, 0)
    finally:
        for pid in lowered:
            os.kill(pid, 9)
        parent.kill()
        parent.wait()
