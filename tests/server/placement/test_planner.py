"""The placement planner on fake machines: which cores, NUMA node or GPUs each engine gets,
who shares, who keeps priority, where builds run, and the refusal of what cannot fit."""

from __future__ import annotations

import dataclasses
import re

import pytest

from compress.vllm_command import detect_cpu_bf16
from server.placement import Machine, ModelNeed, NumaNode, Placer, PlanError, plan, table
from server.placement.needs import GIB, size_ratio, variant_need
from server.settings import EngineSettings

BASE = "m"
GB = 10**9


def needs(base_bytes: int, recipes=("w8a8", "w4a16"), tp=None, base_weight=None) -> list:
    variants = [variant_need(f"{BASE}:{r}", r, base_bytes, GIB) for r in recipes]
    weight = base_weight or sum(v.weight for v in variants) or 1.0
    return [ModelNeed(BASE, "base", base_bytes, GIB, False, None, weight, tp), *variants]


def small() -> list:
    return needs(269 * 10**6)


# -- CPUs ----------------------------------------------------------------------------------------
def test_two_cores_the_gateway_keeps_core_0_and_the_variants_share_the_base_core_below_it():
    p = plan(Machine.simple([2]), small(), EngineSettings())
    base, w8, w4 = p.engines.values()
    assert p.reserved == (0,)
    assert base.cores == w8.cores == w4.cores == (1,)
    assert base.priority == 0 and w8.priority == w4.priority == 10  # the base keeps priority
    assert set(base.shares_with) == {"m:w8a8", "m:w4a16"}
    assert set(w8.shares_with) == {"m", "m:w4a16"}
    assert base.env["VLLM_CPU_OMP_THREADS_BIND"] == "1"
    # Compute on core 1; the API server may also use the gateway's core, as plain vLLM's does.
    assert base.affinity == (0, 1)
    assert "share the base's core" in " ".join(p.notes)


def test_a_lone_engine_on_two_cores_gets_every_core_but_the_reserved_one():
    p = plan(Machine.simple([2]), small()[:1], EngineSettings())
    (base,) = p.engines.values()
    assert base.cores == (1,) and base.shares_with == () and p.reserved == (0,)


def test_the_whole_process_tree_on_the_engine_cores_when_asked():
    p = plan(Machine.simple([2]), small()[:1], EngineSettings(api_server_on_reserved=False))
    assert p.engines[BASE].affinity == (1,)


@pytest.mark.parametrize("cores", [1, 2])
def test_three_engines_refused_when_sharing_is_refused(cores):
    with pytest.raises(PlanError) as err:
        plan(Machine.simple([cores]), small(), EngineSettings(share_cores=False))
    reserved = 0 if cores == 1 else 1
    assert str(err.value) == (
        "3 engines (the base and 2 variants) need 3 cores of their own; 1 core(s) are left "
        f"after the {reserved} reserved for the gateway: short by 2 "
        "(engine.share_cores: true lets variants share cores at a lower priority)"
    )


def test_one_core_machine_reserves_nothing_and_everyone_shares_it():
    p = plan(Machine.simple([1]), small(), EngineSettings())
    assert p.reserved == () and {e.cores for e in p.engines.values()} == {(0,)}


def test_32_cores_on_2_numa_nodes_the_base_alone_gets_a_whole_node():
    """The base computes on one NUMA node (its memory stays local): the node without the
    gateway's core, all 16 of its cores. vLLM's own binding would give it 15 of node 0."""
    p = plan(Machine.simple([16, 16]), small()[:1], EngineSettings())
    (base,) = p.engines.values()
    assert p.reserved == (0,)
    assert base.numa_node == 1 and base.cores == tuple(range(16, 32))
    assert base.env["VLLM_CPU_OMP_THREADS_BIND"] == "16-31"
    assert p.builds.cores == tuple(range(1, 16))  # the idle node's cores, not the base's


def test_32_cores_on_2_numa_nodes_variants_split_the_other_node_by_weight():
    p = plan(Machine.simple([16, 16]), small(), EngineSettings())
    base, w8, w4 = (p.engines[n] for n in ("m", "m:w8a8", "m:w4a16"))
    assert base.cores == tuple(range(16, 32))
    assert w8.numa_node == w4.numa_node == 0
    assert w8.cores == tuple(range(1, 9)) and w4.cores == tuple(range(9, 16))
    assert not set(w8.cores) & set(w4.cores) and w8.shares_with == w4.shares_with == ()
    assert w8.priority == w4.priority == 0  # nobody shares: no one needs a lower priority
    assert p.builds.cores == tuple(range(1, 16))  # the variants' cores, never the base's

    weighted = plan(Machine.simple([16, 16]), small(), EngineSettings(weights={"w8a8": 3}))
    assert len(weighted.engines["m:w8a8"].cores) > len(weighted.engines["m:w4a16"].cores)


def test_one_node_shared_by_weight_the_base_as_much_as_all_variants():
    p = plan(Machine.simple([8]), small(), EngineSettings())
    assert p.engines["m"].cores == (1, 2, 3, 4)
    assert p.engines["m:w8a8"].cores == (5, 6) and p.engines["m:w4a16"].cores == (7,)


def test_smt_siblings_count_as_one_core_and_get_one_omp_thread():
    core_of = {c: c % 4 for c in range(8)}  # CPUs c and c+4 are one core
    machine = Machine((NumaNode(0, tuple(range(8))),), core_of=core_of)
    p = plan(machine, small()[:1], EngineSettings())
    assert p.reserved == (0, 4)
    assert p.engines["m"].cores == (1, 2, 3, 5, 6, 7)
    assert p.engines["m"].threads == (1, 2, 3)


def test_engine_cpus_limit_the_plan_and_leave_the_rest_to_the_gateway():
    p = plan(Machine.simple([4]), small()[:1], EngineSettings(cpus=[1]))
    assert p.reserved == () and p.engines["m"].cores == (1,)


def test_not_enough_ram_is_refused_by_how_much():
    machine = Machine.simple([4], memory_bytes=2 * GIB)
    with pytest.raises(PlanError, match=r"need 3\.5 GiB of RAM .* short by 1\.5 GiB"):
        plan(machine, small(), EngineSettings())


# -- GPUs ----------------------------------------------------------------------------------------
def test_one_80gb_gpu_an_8b_base_and_two_quantized_variants():
    p = plan(Machine.simple([8], [80 * GIB]), needs(16 * GB), EngineSettings())
    base, w8, w4 = (p.engines[n] for n in ("m", "m:w8a8", "m:w4a16"))
    assert p.device == "cuda"
    assert base.gpus == w8.gpus == w4.gpus == (0,)
    assert p.builds.device == "cuda" and p.builds.memory_fraction == 0.2
    total = base.memory_fraction + w8.memory_fraction + w4.memory_fraction
    assert total <= 0.9 - 0.2 + 1e-9  # vLLM's 0.9 for all of them, less what builds keep
    for e in (base, w8, w4):  # each gets at least what it needs
        assert e.memory_fraction * 80 * GIB >= e.need_bytes
        assert e.env["CUDA_VISIBLE_DEVICES"] == "0" and e.tensor_parallel == 1
        assert "--gpu-memory-utilization" in e.flags
    assert w8.estimated and w8.need_bytes == pytest.approx(0.6 * 16 * GB + 3 * GIB, rel=1e-6)
    assert base.memory_fraction > w8.memory_fraction > w4.memory_fraction  # base gets the rest


def test_eight_80gb_gpus_a_70b_base_at_tensor_parallel_4_and_variants():
    p = plan(Machine.simple([64], [80 * GIB] * 8), needs(140 * GB, tp=4), EngineSettings())
    base, w8, w4 = (p.engines[n] for n in ("m", "m:w8a8", "m:w4a16"))
    assert base.gpus == (0, 1, 2, 3) and base.tensor_parallel == 4
    assert base.memory_fraction == 0.9 and base.shares_with == ()
    assert base.flags[-2:] == ("--tensor-parallel-size", "4")
    assert base.env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
    # w8a8 of a 70B (~84 GB) does not fit one GPU: a group of two whole GPUs.
    assert w8.gpus == (4, 5) and w8.tensor_parallel == 2
    assert w4.gpus == (6,) and w4.tensor_parallel == 1
    assert p.builds.gpus == (7,) and p.builds.memory_fraction is None  # a GPU of their own
    used = [g for e in p.engines.values() for g in e.gpus]
    assert len(used) == len(set(used))  # no GPU shared by two engines


def test_70b_at_tensor_parallel_1_on_one_80gb_gpu_is_refused_by_how_much():
    with pytest.raises(PlanError) as err:
        plan(Machine.simple([8], [80 * GIB]), needs(140 * GB, (), tp=1), EngineSettings())
    message = str(err.value)
    assert message.startswith("m needs 133.4 GiB per GPU at tensor parallel 1")
    assert "a GPU offers 72.0 GiB (0.9 of 80.0 GiB): short by 61.4 GiB" in message
    assert "raise engine.tensor_parallel_size" in message


def test_tensor_parallel_beyond_the_gpus_is_refused():
    with pytest.raises(PlanError, match=r"tensor parallel 4; the machine has 2 GPU\(s\): short"):
        plan(Machine.simple([8], [80 * GIB] * 2), needs(16 * GB, (), tp=4), EngineSettings())


def test_variants_with_no_gpu_left_are_refused_at_start():
    machine = Machine.simple([8], [80 * GIB] * 4)
    with pytest.raises(PlanError, match=r"^no room for m:w4a16: .*every GPU is taken"):
        plan(machine, needs(140 * GB, ("w4a16",), tp=4), EngineSettings())
    with pytest.raises(PlanError, match=r"^no room for m:w8a8: it needs 2 whole GPUs .* by 2$"):
        plan(machine, needs(140 * GB, ("w8a8",), tp=4), EngineSettings())


# -- at run time ---------------------------------------------------------------------------------
def test_a_variant_added_at_run_time_on_two_cores_shares_at_a_lower_priority():
    placer = Placer(plan(Machine.simple([2]), small()[:1], EngineSettings()), EngineSettings())
    base_before = placer.placement("m")
    added = placer.place(variant_need("m:w8a8", "w8a8", 269 * 10**6, GIB))
    assert added.cores == (1,) and added.priority == 10 and added.shares_with == ("m",)
    assert placer.placement("m").cores == base_before.cores
    assert placer.placement("m").shares_with == ("m:w8a8",)
    placer.release("m:w8a8")
    assert placer.placement("m").shares_with == ()


def test_a_variant_added_at_run_time_takes_free_cores_first():
    placer = Placer(plan(Machine.simple([16, 16]), small()[:1], EngineSettings()), EngineSettings())
    added = placer.place(variant_need("m:w8a8", "w8a8", 269 * 10**6, GIB))
    assert added.cores == tuple(range(1, 16)) and added.shares_with == ()


def test_a_variant_added_at_run_time_to_a_full_gpu_gets_no_room_and_the_base_keeps_its_own():
    settings = EngineSettings()
    placer = Placer(plan(Machine.simple([8], [80 * GIB]), needs(16 * GB), settings), settings)
    before = placer.placement("m")
    with pytest.raises(
        PlanError, match=r"^no room for m:fp8: it needs 11\.2 GiB .*\(the base keeps"
    ):
        placer.place(variant_need("m:fp8", "fp8", 16 * GB, GIB))
    assert placer.placement("m") == before and "m:fp8" not in placer.plan.engines


def test_a_variant_added_at_run_time_fits_beside_a_variant_on_its_gpu():
    settings = EngineSettings()
    machine = Machine.simple([8], [80 * GIB] * 3)
    placer = Placer(plan(machine, needs(16 * GB, ("w4a16",)), settings), settings)
    # GPU 0: the base; GPU 1: w4a16; GPU 2: builds (kept whole).
    added = placer.place(variant_need("m:w8a8", "w8a8", 16 * GB, GIB))
    assert added.gpus == (1,) and added.shares_with == ("m:w4a16",)
    assert placer.placement("m:w4a16").shares_with == ("m:w8a8",)


# -- sizes and the table -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("recipe", "ratio"),
    [("w8a8", 0.6), ("w4a16", 0.45), ("fp8", 0.55), ("prune-0.25", 0.78), ("w4a16-g32", 0.45),
     ("prune-0.25+distill+w8a8", 0.78 * 0.6), ("sparse-2:4", 1.0), ("my-recipe.yaml", 1.0)],
)  # fmt: skip
def test_estimated_size_ratios(recipe, ratio):
    assert size_ratio(recipe) == pytest.approx(ratio)


def test_the_table_names_every_engine_and_where_builds_run():
    text = table(plan(Machine.simple([16, 16]), small(), EngineSettings()))
    assert re.search(r"^m\s+base\s+1\s+16-31\s+16\s+0\s+auto\s+-", text, re.M), text
    assert re.search(r"^m:w8a8\s+variant\s+0\s+1-8\s+8\s+0\s+auto\s+-", text, re.M), text
    assert "builds: cpu on cores 1-15, nice 19" in text
    gpu = table(plan(Machine.simple([64], [80 * GIB] * 8), needs(140 * GB, tp=4), EngineSettings()))
    assert re.search(r"^m\s+base\s+0,1,2,3\s+4\s+0\.90", gpu, re.M), gpu
    assert "builds: cuda on GPUs 7" in gpu


# -- dtype ----------------------------------------------------------------------------------------
def test_cpus_without_bf16_compute_in_float32_and_a_set_dtype_wins():
    # vLLM CPU emulates bf16 on an AVX2-only CPU: float32 there was ~4x faster (toolchain.md).
    no_bf16 = dataclasses.replace(Machine.simple([2]), cpu_bf16=False)
    engines = plan(no_bf16, small(), EngineSettings()).engines.values()
    assert {p.flags[-2:] for p in engines} == {("--dtype", "float32")}
    assert {p.dtype() for p in engines} == {"float32"}
    # With bf16 in hardware vLLM keeps the checkpoint's dtype: no flag.
    with_bf16 = plan(Machine.simple([2]), small(), EngineSettings()).engines.values()
    assert all(p.flags == () for p in with_bf16)
    chosen = plan(no_bf16, small(), EngineSettings(dtype="bfloat16")).engines.values()
    assert {p.dtype() for p in chosen} == {"bfloat16"}


@pytest.mark.parametrize(
    ("cpuinfo", "bf16"),
    [("flags\t\t: fpu sse avx2 fma\n", False),
     ("flags\t\t: fpu avx512f avx512_bf16 amx_tile\n", True),
     ("Features\t: fp asimd bf16 i8mm\n", True),
     ("processor\t: 0\n", True)],  # no flags line: vLLM's own default
)  # fmt: skip
def test_bf16_is_read_from_cpuinfo(tmp_path, cpuinfo, bf16):
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    assert detect_cpu_bf16(path) is bf16
    assert detect_cpu_bf16(tmp_path / "missing") is True
