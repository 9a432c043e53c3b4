"""Every named recipe on the default model: built once per session with small budgets, then
loaded and run in transformers and in vLLM CPU (one engine at a time).

Slow: about 16 minutes on a quiet 2-core machine (part of `make test`). Needs the default model
(server.basemodel prepares it) and, for the vLLM checks, the vLLM environment
(LEANSERVE_VLLM_PYTHON or .venv/bin/python).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from compress import checkpoint, speed
from compress.schema import Card
from compress.vllm_command import detect_cpu_avx512

from .conftest import json_lines, run_cli

pytestmark = pytest.mark.slow

RECIPES = [
    "w8a8",
    "w4a16",
    "fp8",
    "prune-0.25",
    "prune-0.25+distill",
    "wanda-0.5",
    "sparse-2:4",
    "prune-0.25+distill+w8a8",
]
# Small budgets: the point here is that each recipe builds and serves, not its quality
# (bench/compress_targets.py measures that with full budgets).
BUDGET = [
    "--calibration-samples", "8", "--distill-seconds", "20",
    "--eval-windows", "2", "--eval-passages", "8", "--chat-prompts", "8", "--chat-max-tokens", "16",
]  # fmt: skip
SPEED_RECIPE = "w8a8"  # one build also measures speed in vLLM against the base
# Where vLLM CPU has no int4 GEMM (x86 without AVX-512) the gateway refuses w4a16 before its
# build (server/placement/kernels.py), so this test does not build it there either: on such a
# CPU that build alone took most of a CI run. The tiny-model tests build w4a16 everywhere.
NO_INT4 = "vLLM CPU's AVX2 kernels have no int4 GEMM: w4a16 is refused here (placement/kernels.py)"
BUILT = [r for r in RECIPES if r != "w4a16" or detect_cpu_avx512()]


@pytest.fixture(scope="session")
def real_store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("real-store")


@pytest.fixture(scope="session")
def variants(real_base, real_store):
    """Build a recipe the first time a test asks for it; later tests reuse the result."""
    built: dict[str, dict] = {}

    def get(recipe: str) -> dict:
        if recipe not in BUILT:
            pytest.skip(NO_INT4)
        if recipe not in built:
            extra = ["--speed"] if recipe == SPEED_RECIPE and speed.default_vllm_python() else []
            out = run_cli(
                "build", "--base", str(real_base), "--recipe", recipe, "--store",
                str(real_store), "--progress-json", "--no-bars", *BUDGET, *extra,
            )  # fmt: skip
            events = json_lines(out.stdout)
            assert out.returncode == 0 and events[-1]["event"] == "done", out.stderr[-4000:]
            built[recipe] = events[-1]
        return built[recipe]

    return get


@pytest.fixture(scope="session")
def vllm_python() -> str:
    python = speed.default_vllm_python()
    if not python:
        pytest.skip("no vLLM environment: set LEANSERVE_VLLM_PYTHON")
    return python


@pytest.mark.parametrize("recipe", RECIPES)
def test_builds_with_a_measured_card(variants, recipe):
    done = variants(recipe)
    card = done["card"]
    assert Card.model_validate(card).dump() == card  # the schema reads it whole
    assert card["variant"].startswith("smollm2-135m-instruct-")
    q = card["quality"]
    assert q["perplexity"] > 1 and q["base_perplexity"] > 1
    assert q["kl_to_base"] >= 0 and 0 <= q["top1_agreement"] <= 1
    assert 0 <= q["last_word_accuracy"] <= 1
    assert q["split"] == "test" and q["windows"] == 2  # cards report the test split
    for name, (low, high) in q["ci95"].items():
        assert low <= q[name] <= high, name
    assert set(q["ci95"]) == {"perplexity", "perplexity_change", "kl_to_base", "top1_agreement"}
    assert card["size"]["bytes"] > 0 and card["size"]["parameters"] > 0
    assert json.loads((Path(done["path"]) / "card.json").read_text()) == card
    if recipe.startswith("prune"):
        assert card["size"]["parameter_ratio"] < 0.9
    if recipe in ("w8a8", "w4a16"):
        assert card["size"]["size_ratio"] < 0.65


@pytest.mark.parametrize("recipe", RECIPES)
def test_loads_and_generates_in_transformers(variants, recipe):
    import torch

    path = Path(variants(recipe)["path"])
    model = checkpoint.load_model(path)
    tokenizer = checkpoint.load_tokenizer(path)
    ids = tokenizer("The if statement is used for", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=8, do_sample=False)
    text = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert out.shape[1] == ids.shape[1] + 8 and text.strip()


@pytest.mark.parametrize("recipe", RECIPES)
def test_loads_and_generates_in_vllm(variants, recipe, vllm_python, tmp_path):
    path = Path(variants(recipe)["path"])
    engine = speed.start_engine(path, vllm_python, tmp_path / "vllm.log", "v")
    try:
        try:
            speed.wait_ready(engine)
            text = speed.complete(engine, "The if statement is used for", 8)
        except Exception as exc:
            if recipe == "fp8":
                pytest.skip(f"vLLM CPU cannot run the FP8 checkpoint: {engine.first_error()}")
            raise AssertionError(f"{exc}: {engine.first_error()}") from exc
    finally:
        speed.stop_engine(engine)
    assert re.search(r"\w", text)


def test_speed_is_measured_against_the_base(variants, vllm_python):
    card = variants(SPEED_RECIPE)["card"]
    assert Card.model_validate(card).speed.speedup_32 == card["speed"]["speedup_32"]
    s = card["speed"]
    assert s["status"] == "measured", s["status"]
    for who in ("base", "variant"):
        for streams in ("streams_1", "streams_32"):
            assert s[who][streams]["tokens_per_s"] > 0
            assert s[who][streams]["ttft_s_mean"] > 0
    assert s["speedup_32"] > 0
    assert card["serving"]["vllm_cpu"] == "ok"


def test_report_over_the_built_variants(variants, real_store, tmp_path):
    for recipe in BUILT:
        variants(recipe)
    out = run_cli("report", "--store", str(real_store), "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    md = (tmp_path / "report.md").read_text()
    assert md.count("| smollm2-135m-instruct-") == len(BUILT)
    assert (tmp_path / "report.png").stat().st_size > 10_000
