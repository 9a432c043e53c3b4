"""Each engine's processes keep to the cores the placement plan gives it: a process tree set to
a core set stays there, the base alone computes on every core but the gateway's, and vLLM's own
binding log agrees."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from pydantic import ValidationError

from server.app import build_registry
from server.backends.engine_process import _child_setup
from server.placement.machine import detect, format_cpulist
from server.settings import EngineSettings, Settings

# A process that starts a child (as vLLM's API server starts EngineCore) and prints the cores
# the child may use.
CHILD = "import os; print(sorted(os.sched_getaffinity(0)))"
TREE = (
    "import subprocess, sys\n"
    f"print(subprocess.run([sys.executable, '-c', {CHILD!r}], capture_output=True, text=True)"
    ".stdout.strip())\n"
)


def test_the_engine_and_its_children_keep_to_the_named_cores():
    core = max(os.sched_getaffinity(0))
    out = subprocess.run(
        [sys.executable, "-c", TREE], preexec_fn=_child_setup((core,)), capture_output=True,
        text=True, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == f"[{core}]"


def test_without_cpus_an_engine_may_use_every_core():
    out = subprocess.run(
        [sys.executable, "-c", TREE], preexec_fn=_child_setup(None), capture_output=True,
        text=True, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == str(sorted(os.sched_getaffinity(0)))


def test_cores_this_process_may_not_use_are_refused_by_name():
    with pytest.raises(
        ValidationError, match=r"engine.cpus names cores this machine does not have: \[4096\]"
    ):
        EngineSettings(cpus=[4096])


def test_the_base_alone_is_planned_on_every_core_but_the_gateways(tmp_path):
    """The plan for this machine: the gateway keeps the first core, the base computes on every
    other core (of its NUMA node) and its OpenMP threads bind there."""
    machine = detect(with_gpus=False)
    if len(machine.nodes) > 1 or len(machine.cpus) < 2:
        pytest.skip("stated for a machine of one NUMA node and several cores")
    (backend,) = build_registry(Settings(home=tmp_path, variants=[])).backends.values()
    placement = backend.engine.placement
    allowed = sorted(os.sched_getaffinity(0))
    assert placement.cores == tuple(allowed[1:])
    assert backend.engine.config.environment()["VLLM_CPU_OMP_THREADS_BIND"] == format_cpulist(
        allowed[1:]
    )


def _threads(pid: int) -> dict[int, set[int]]:
    """Thread id -> the cores it may run on, for every thread of a process."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out[int(task.name)] = set(os.sched_getaffinity(int(task.name)))
    return out


@pytest.mark.slow
def test_a_cpu_engine_alone_computes_on_every_core_but_the_reserved_one(gateway, home):
    """A real gateway with only the base (the session's): vLLM's own log names the cores its
    OpenMP threads bind to, and the engine's process tree keeps off the gateway's core except
    for vLLM's API server (engine.api_server_on_reserved)."""
    allowed = sorted(os.sched_getaffinity(0))  # the gateway's too: it inherits this process's
    if len(detect(with_gpus=False).nodes) > 1 or len(allowed) < 2:
        pytest.skip("stated for a machine of one NUMA node and several cores")
    reserved, cores = {allowed[0]}, set(allowed[1:])  # the gateway keeps the first core
    engine = gateway.engine()
    assert engine["placement"]["cores"] == sorted(cores)
    assert engine["placement"]["env"]["VLLM_CPU_OMP_THREADS_BIND"] == format_cpulist(cores)

    log = (home / "logs" / f"engine-{next(iter(gateway.ready_info()['engines']))}.log").read_text()
    lines = re.findall(r"local_rank=0, core ids=\[([0-9, ]*)\]", log)
    assert lines, "vLLM logged no OpenMP binding"
    assert {int(c) for c in lines[-1].split(",")} == cores  # vLLM's own account, latest start
    assert re.findall(r"reserved_cpus=\[(.*?)\]", log)[-1] == ""  # none: we bound it

    api_server = psutil.Process(engine["pid"])
    tree = [api_server, *api_server.children(recursive=True)]
    assert len(tree) >= 2, "no EngineCore process under the API server"
    every = {tid: aff for p in tree for tid, aff in _threads(p.pid).items()}
    assert all(aff <= cores | reserved for aff in every.values()), every
    compute = {tid: aff for p in tree[1:] for tid, aff in _threads(p.pid).items() if aff <= cores}
    # The compute threads (vLLM pins each OpenMP thread to one of its cores) cover the
    # engine's cores and none may run on the gateway's.
    assert compute and set().union(*compute.values()) == cores, every
    assert os.sched_getaffinity(api_server.pid) == cores | reserved
