"""The plan reaches the engines: machine detection, model sizes, each engine's environment and
flags, /ready, the Prometheus info series, variants with no room, `leanserve plan`, and the
refusal at start. No engine is started here."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from server.app import build_registry
from server.backends.engine_process import EngineConfig, compile_cache_dir
from server.backends.registry import Registry
from server.cli import main as cli
from server.health.router import _details
from server.metrics.gpu import Nvml
from server.metrics.registry import Metrics
from server.placement import Machine, Placer, PlanError, model_needs, plan
from server.placement.machine import detect_gpus, detect_nodes, format_cpulist, parse_cpulist
from server.placement.needs import DEFAULT_BASE_BYTES, GIB, size_ratio
from server.settings import EngineSettings, load_settings
from server.variants.service import VariantManager
from tests.server.gateway import REPO
from tests.server.metrics.fake_nvml import FakeGpu, FakeNvml

BASE = "smollm2-135m-instruct"
W4A16_CARD = REPO / "bench/results/w4a16.card.json"


def test_numa_nodes_from_sys_and_one_node_without(tmp_path):
    for node, cpus in ((0, "0-3"), (1, "4-7")):
        (tmp_path / f"node{node}").mkdir()
        (tmp_path / f"node{node}" / "cpulist").write_text(cpus + "\n")
    nodes = detect_nodes({0, 1, 2, 5, 6}, tmp_path)
    assert [(n.id, n.cpus) for n in nodes] == [(0, (0, 1, 2)), (1, (5, 6))]
    (only,) = detect_nodes({0, 1}, tmp_path / "absent")
    assert only.cpus == (0, 1)


def test_gpus_and_their_memory_from_nvml():
    nvml = Nvml.open(FakeNvml([FakeGpu(memory_total=80 * GIB), FakeGpu(memory_total=40 * GIB)]))
    gpus = detect_gpus(nvml)
    assert [(g.index, g.memory_bytes) for g in gpus] == [(0, 80 * GIB), (1, 40 * GIB)]


def test_cpulists_read_and_written_as_the_kernel_and_vllm_do():
    assert parse_cpulist("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11]
    assert format_cpulist([11, 0, 1, 2, 3, 8, 10]) == "0-3,8,10-11"


def test_model_needs_take_the_card_once_built_and_estimate_before(tmp_path):
    settings = load_settings(home=tmp_path, variants=["w4a16", "w8a8"])
    card = json.loads(W4A16_CARD.read_text())
    card["base"]["path"] = str((tmp_path / "models" / BASE).resolve())
    folder = tmp_path / "variants" / "fp" / "hash"
    folder.mkdir(parents=True)
    (folder / "card.json").write_text(json.dumps(card))
    base, w4, w8 = model_needs(settings)
    assert (base.name, base.weight_bytes) == (BASE, DEFAULT_BASE_BYTES)  # not converted yet
    assert base.weight == 2  # as much as both variants
    assert w4.weight_bytes == card["size"]["bytes"] and not w4.estimated
    assert w8.weight_bytes == int(DEFAULT_BASE_BYTES * size_ratio("w8a8")) and w8.estimated
    assert w8.kv_bytes == GIB
    remote = load_settings(home=tmp_path, remote_engines={BASE: "http://127.0.0.1:9"})
    assert model_needs(remote) == []


def cpu_plan(tmp_path, **engine):
    settings = load_settings(home=tmp_path, variants=[], engine=engine)
    return settings, plan(Machine.simple([16, 16]), model_needs(settings), settings)


def test_a_cpu_engine_gets_its_cores_threads_and_priority(tmp_path):
    settings, p = cpu_plan(tmp_path, nice=3)
    config = EngineConfig.from_settings(
        settings.engine, BASE, "/m", placement=p.engines[BASE],
        compile_cache=compile_cache_dir(settings.home),
    )  # fmt: skip
    env = config.environment()
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "16-31"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert env["VLLM_CACHE_ROOT"] == str((tmp_path / "compile-cache").resolve())
    assert env["VLLM_USE_AOT_COMPILE"] == "0"  # its AOT artifacts do not load back (0.32)
    assert config.cpus == (0, *range(16, 32)) and config.nice == 3
    assert "--enforce-eager" not in config.command(8000)  # compiled, as plain vLLM


def test_the_plan_wins_over_an_inherited_binding(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0")
    settings, p = cpu_plan(tmp_path)
    config = EngineConfig.from_settings(settings.engine, BASE, "/m", placement=p.engines[BASE])
    assert config.environment()["VLLM_CPU_OMP_THREADS_BIND"] == "16-31"


def test_a_gpu_engine_gets_its_devices_and_flags_before_extra_args(tmp_path):
    settings = load_settings(
        home=tmp_path, engine={"gpu_memory_utilization": 0.8, "extra_args": ["--seed", "1"]}
    )
    p = plan(Machine.simple([8], [80 * GIB] * 2), model_needs(settings), settings)
    config = EngineConfig.from_settings(settings.engine, BASE, "/m", placement=p.engines[BASE])
    cmd = config.command(8000)
    assert cmd.count("--gpu-memory-utilization") == 1  # the plan's, not the setting's too
    assert cmd[-6:] == ["--gpu-memory-utilization", "0.8", "--tensor-parallel-size", "1",
                        "--seed", "1"]  # fmt: skip
    env = config.environment()
    assert env["CUDA_VISIBLE_DEVICES"] == "0" and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


def test_the_base_engine_and_ready_carry_the_placement(tmp_path):
    settings, p = cpu_plan(tmp_path)
    (backend,) = build_registry(settings, placement=p).backends.values()
    assert backend.engine.placement == p.engines[BASE]
    shown = _details(backend)["placement"]
    assert shown["cores"] == list(range(16, 32)) and shown["numa_node"] == 1
    assert shown["env"]["VLLM_CPU_OMP_THREADS_BIND"] == "16-31"


def test_the_placement_info_series(tmp_path):
    _, p = cpu_plan(tmp_path)
    metrics = Metrics()
    metrics.set_placement(BASE, p.engines[BASE])
    labels = {
        "variant": BASE, "device": "cpu", "cores": "16-31", "numa_node": "1", "gpus": "",
        "tp": "1", "memory_fraction": "", "shares_with": "", "nice": "0",
    }  # fmt: skip
    assert metrics.registry.get_sample_value("leanserve_engine_placement_info", labels) == 1
    metrics.clear_placement(BASE)
    assert metrics.registry.get_sample_value("leanserve_engine_placement_info", labels) is None


def manager(tmp_path, machine: Machine) -> VariantManager:
    settings = load_settings(home=tmp_path, variants=["w8a8"])
    placer = Placer(plan(machine, model_needs(settings), settings), settings)

    async def base() -> str:
        raise AssertionError("nothing is built here")

    return VariantManager(settings, Registry(BASE), Metrics(), base, placer)


def test_a_variant_with_no_room_gets_the_state_no_room_with_the_reason(tmp_path):
    m = manager(tmp_path, Machine.simple([8], [24 * GIB]))
    before = m.placer.placement(BASE)
    variant = m.request("fp8")
    view = m.view(variant)  # not the admin's view: the reason names no path, so it shows
    assert view["state"] == "no_room"
    assert view["error"].startswith(f"no room for {BASE}:fp8: it needs ")
    assert m._queue.empty()  # nothing is built for it
    assert m.placer.placement(BASE) == before
    assert m.request("fp8").state == "no_room"  # asked again: checked again


async def test_a_variant_added_at_run_time_claims_its_place_and_gives_it_back(tmp_path):
    m = manager(tmp_path, Machine.simple([16, 16]))
    variant = m.request("w4a16")
    assert variant.state == "queued"
    claimed = m.placer.placement(f"{BASE}:w4a16")
    assert claimed is not None and not set(claimed.cores) & set(m.placer.placement(BASE).cores)
    await m.retire("w4a16")
    assert m.placer.placement(f"{BASE}:w4a16") is None


def test_an_int4_variant_on_a_cpu_without_avx512_fails_before_its_build(tmp_path):
    # vLLM CPU's AVX2 kernel library has no int4 GEMM: such an engine would start, then die on
    # its first request (server/placement/kernels.py).
    m = manager(tmp_path, dataclasses.replace(Machine.simple([16, 16]), cpu_avx512=False))
    for recipe in ("w4a16", "prune-0.25+distill+w4a16"):
        variant = m.request(recipe)
        assert variant.state == "failed" and "no int4 (w4a16) kernel for this CPU" in variant.error
        assert m.placer.placement(f"{BASE}:{recipe}") is None  # its room is given back
    assert m._queue.empty()  # nothing is built for them
    assert m.request("w8a8").state == "queued"  # int8 runs on AVX2 (oneDNN)
    # The same recipe on an AVX-512 CPU, or on a GPU, is built.
    assert manager(tmp_path, Machine.simple([16, 16])).request("w4a16").state == "queued"
    gpu = dataclasses.replace(Machine.simple([16], [80 * GIB] * 2), cpu_avx512=False)
    assert manager(tmp_path, gpu).request("w4a16").state == "queued"


def test_a_recipe_files_int4_is_seen_in_its_card(tmp_path):
    m = manager(tmp_path, dataclasses.replace(Machine.simple([16, 16]), cpu_avx512=False))
    from server.placement.kernels import cpu_refusal

    steps = [{"kind": "layer_prune"}, {"kind": "quantize", "scheme": "w4a16"}]
    assert "no int4" in cpu_refusal(m.placer.plan.machine, "cpu", "mine.yaml", steps)
    assert cpu_refusal(m.placer.plan.machine, "cpu", "mine.yaml", steps[:1]) is None


def test_leanserve_plan_prints_the_table(capsys):
    assert cli(["plan", "--cores", "16,16", "--memory-gib", "64"]) == 0
    out = capsys.readouterr().out
    assert "reserved for the gateway: cores 0" in out
    assert f"{BASE}  " in out and "16-31" in out


def test_leanserve_plan_refuses_what_does_not_fit(capsys, monkeypatch):
    monkeypatch.setenv("LEANSERVE_ENGINE__TENSOR_PARALLEL_SIZE", "1")
    args = ["plan", "--gpus", "80", "--model", "org/big", "--base-gib", "130", "--json"]
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert "big needs 133.0 GiB per GPU at tensor parallel 1" in err and "short by 61.0" in err


def test_serve_refuses_to_start_with_the_plans_message(tmp_path):
    env = {**os.environ, "LEANSERVE_HOME": str(tmp_path), "LEANSERVE_ENGINE__RESERVED_CPUS": "4096"}
    out = subprocess.run(
        [sys.executable, "-m", "server", "serve", "--port", "0"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr[-2000:]
    assert "leanserve: the engines do not fit this machine: engine.reserved_cpus=4096" in out.stderr
    assert not (tmp_path / "logs").exists()  # nothing was started


def test_compiled_by_default_eager_as_a_setting():
    assert EngineSettings().enforce_eager is False
    assert "--enforce-eager" in EngineConfig("m", "/m", "python", enforce_eager=True).command(1)


def test_plan_with_an_unknown_base_size_still_places_cpus(tmp_path):
    settings = load_settings(home=tmp_path, model="org/not-downloaded", variants=["w8a8"])
    base, w8 = model_needs(settings)
    assert base.weight_bytes is None and w8.weight_bytes is None
    p = plan(Machine.simple([4]), [base, w8], settings)
    assert p.engines["not-downloaded"].need_bytes is None


def test_a_plan_is_plain_data():
    p = plan(Machine.simple([2]), [], EngineSettings())
    assert p.engines == {} and json.dumps(p.as_dict())
    assert dataclasses.is_dataclass(p)


def test_cuda_asked_without_a_gpu_is_refused():
    with pytest.raises(PlanError, match="engine.device is cuda, but no NVIDIA GPU"):
        plan(Machine.simple([2]), [], EngineSettings(device="cuda"))
