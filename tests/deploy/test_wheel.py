"""The project's wheel carries what compress and the gateway read at run time, and compress works
from a non-editable install of it: its recipes and texts come from the installed package, not
from this checkout (the Docker images install the project this way).

The wheel is built offline from a copy of the files the Dockerfile's `source` stage copies, and
installed --no-deps into a fresh venv. That venv reaches the running interpreter's
site-packages (pyyaml, pydantic, ...) through a .pth line, which Python appends after the venv's
own site-packages; the editable install there is not activated (a .pth-appended folder's own
.pth files are not processed), so `compress` can only come from the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import REPO

# What the Dockerfile's `source` stage copies; a wheel built from these alone is what images get.
SOURCES = ["pyproject.toml", "README.md", "server", "compress"]
# Folders of non-Python files read at run time, relative to the repository.
DATA_DIRS = ["compress/data", "server/ui/static"]
WELL_KNOWN_RECIPES = {"w8a8", "w4a16", "fp8", "distill", "sparse-2:4"}


def run(cmd: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, **kwargs
    )
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def data_files() -> set[str]:
    """Every non-Python file under DATA_DIRS in the checkout, as wheel paths."""
    found = set()
    for folder in DATA_DIRS:
        for path in (REPO / folder).rglob("*"):
            if path.is_file() and path.suffix not in (".py", ".pyc"):
                found.add(path.relative_to(REPO).as_posix())
    return found


def recipe_names() -> set[str]:
    names = set()
    for path in (REPO / "compress/data/recipes").glob("*.yaml"):
        names.add(str(yaml.safe_load(path.read_text()).get("name") or path.stem))
    return names


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    for name in SOURCES:
        origin = REPO / name
        if origin.is_dir():
            shutil.copytree(origin, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(origin, src / name)
    pip = [sys.executable, "-m", "pip"]
    run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", "dist", "./src"],
        cwd=tmp,
    )
    (built,) = (tmp / "dist").glob("leanserve-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory) -> Path:
    """A fresh venv holding the wheel; returns its python."""
    tmp = tmp_path_factory.mktemp("venv")
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp)
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    run([*pip, "install", "--no-deps", "--no-index", str(wheel)], cwd=tmp)
    purelib = run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp
    )
    deps = sysconfig.get_path("purelib")  # the running env has compress's light dependencies
    Path(purelib.stdout.strip(), "zz-test-deps.pth").write_text(deps + "\n")
    return python


def test_wheel_carries_the_runtime_data(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = data_files()
    assert {"compress/data/calibration.txt", "compress/data/heldout.txt"} <= expected
    assert {f"compress/data/recipes/{n}.yaml" for n in ("w8a8", "w4a16", "fp8")} <= expected
    missing = sorted(expected - names)
    assert not missing, f"the wheel lacks files read at run time: {missing}"


def test_compress_runs_from_the_installed_wheel(installed: Path):
    cwd = installed.parents[2]  # the temp folder: outside the repository
    assert REPO not in cwd.parents
    probe = run(
        [
            str(installed),
            "-c",
            "import json, compress, compress.recipes as r, compress.texts as t;"
            "print(json.dumps([compress.__file__, str(r.RECIPE_DIR), t.CALIBRATION_TEXT.is_file(),"
            " t.HELDOUT_TEXT.is_file()]))",
        ],
        cwd,
    )
    module, recipe_dir, calibration, heldout = json.loads(probe.stdout)
    venv = installed.parents[1]
    assert Path(module).is_relative_to(venv), f"compress imported from {module}, not the wheel"
    assert Path(recipe_dir).is_relative_to(venv)
    assert calibration and heldout, "the shipped texts are not in the installed package"

    listed = run([str(installed), "-m", "compress", "list-recipes"], cwd).stdout
    names = {line.split()[0] for line in listed.splitlines() if line.strip()}
    missing = (recipe_names() | WELL_KNOWN_RECIPES) - names
    assert not missing, f"list-recipes from the wheel lacks {missing}:\n{listed}"
