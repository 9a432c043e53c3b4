"""engine.cpus keeps every process of an engine on the named cores, and cpu_spread spreads
engines over those cores only."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from server.app import cpu_core
from server.backends.engine_process import _child_setup
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


def test_cpu_spread_round_robins_over_the_named_cores_only(tmp_path):
    core = max(os.sched_getaffinity(0))
    settings = Settings(home=tmp_path, engine={"cpus": [core]})
    assert [cpu_core(settings, i) for i in range(3)] == [str(core)] * 3
    everywhere = Settings(home=tmp_path)
    allowed = sorted(os.sched_getaffinity(0))
    assert cpu_core(everywhere, len(allowed)) == str(allowed[0])
