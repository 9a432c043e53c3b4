"""engine.nice lowers the priority of an engine's compute processes, not of its API server."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from server.backends.engine_process import lower_priority_of_workers

# A stand-in for vLLM's process tree: a parent (the API server) with a child that has its own
# child (EngineCore and a worker).
TREE = (
    "import subprocess, sys, time\n"
    'inner = \'import subprocess, sys, time; subprocess.Popen([sys.executable, "-c", '
    '"import time; time.sleep(60)"]); time.sleep(60)\'\n'
    "subprocess.Popen([sys.executable, '-c', inner])\n"
    "time.sleep(60)\n"
)


def test_workers_get_the_nice_value_and_the_parent_keeps_its_own():
    parent = subprocess.Popen([sys.executable, "-c", TREE])
    try:
        lowered: list[int] = []
        deadline = time.monotonic() + 20
        while len(lowered) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
            lowered = lower_priority_of_workers(parent.pid, 7)
        assert len(lowered) == 2, lowered
        assert all(os.getpriority(os.PRIO_PROCESS, pid) == 7 for pid in lowered)
        assert os.getpriority(os.PRIO_PROCESS, parent.pid) == os.getpriority(os.PRIO_PROCESS, 0)
    finally:
        for pid in lower_priority_of_workers(parent.pid, 7):
            os.kill(pid, 9)
        parent.kill()
        parent.wait()
