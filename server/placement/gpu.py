"""GPU placement: which GPUs each engine uses, with what share of their memory and parallelism.

Rules (README "Placement"):
- An engine needs, on each of its GPUs: weights / tp + KV budget / tp + OVERHEAD_BYTES (CUDA
  context, activations, CUDA graphs: an estimate). The engines on a GPU together take at most
  `engine.gpu_memory_utilization` of it (default 0.9, vLLM's own default for one engine).
- Tensor parallelism: `engine.tensor_parallel_size` for the base, else (and for variants) the
  smallest power of two whose per-GPU need fits one GPU. A tensor-parallel group gets whole
  GPUs. With more than one GPU the base gets its GPUs to itself.
- Variants are packed by memory, largest first, onto the GPUs no base uses (best fit); on a
  single GPU they share it with the base, which gets what they leave.
- Builds: a GPU no engine uses; else `engine.build_gpu_fraction` of a variants' GPU (or of the
  only GPU) is kept free for them, so a build can never take memory a serving engine counts
  on; where that does not fit either, builds run on the CPU.
"""

from __future__ import annotations

import math

from server.placement.machine import Gpu, Machine
from server.placement.needs import GIB, ModelNeed
from server.placement.plan import BuildPlacement, Placement, PlanError

OVERHEAD_BYTES = 2 * GIB  # per GPU an engine uses (estimate, see the module's docstring)
DEFAULT_CAP = 0.9  # vLLM's default --gpu-memory-utilization


def per_gpu(need: ModelNeed, tp: int) -> int:
    return math.ceil(((need.weight_bytes or 0) + need.kv_bytes) / tp) + OVERHEAD_BYTES


def _fraction_up(nbytes: int, gpu: Gpu) -> float:
    return math.ceil(100 * nbytes / gpu.memory_bytes) / 100


def pick_tp(need: ModelNeed, gpus: tuple[Gpu, ...], cap: float, requested: int | None) -> int:
    usable = cap * min(g.memory_bytes for g in gpus)
    if requested is not None:
        if requested > len(gpus):
            raise PlanError(
                f"{need.name} asks for tensor parallel {requested}; the machine has "
                f"{len(gpus)} GPU(s): short by {requested - len(gpus)}"
            )
        tp = requested
    else:
        tp = 1
        while tp * 2 <= len(gpus) and per_gpu(need, tp) > usable:
            tp *= 2
    if per_gpu(need, tp) > usable:
        short = per_gpu(need, tp) - usable
        raise PlanError(
            f"{need.name} needs {per_gpu(need, tp) / GIB:.1f} GiB per GPU at tensor parallel "
            f"{tp} (weights {(need.weight_bytes or 0) / GIB:.1f} GiB + KV "
            f"{need.kv_bytes / GIB:.1f} GiB over {tp} GPU(s), + "
            f"{OVERHEAD_BYTES / GIB:.0f} GiB overhead); a GPU offers {usable / GIB:.1f} GiB "
            f"({cap:g} of {min(g.memory_bytes for g in gpus) / GIB:.1f} GiB): short by "
            f"{short / GIB:.1f} GiB"
            + ("" if requested is None else "; raise engine.tensor_parallel_size")
        )
    return tp


def gpu_placement(
    need: ModelNeed, gpus: tuple[int, ...], fraction: float, tp: int, shares=()
) -> Placement:
    env = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus))}
    flags = ("--gpu-memory-utilization", f"{fraction:g}", "--tensor-parallel-size", str(tp))
    return Placement(
        engine=need.name, role=need.role, device="cuda", gpus=gpus, memory_fraction=fraction,
        tensor_parallel=tp, shares_with=tuple(shares), need_bytes=per_gpu(need, tp),
        estimated=need.estimated, env=env, flags=flags,
    )  # fmt: skip


def plan_gpus(
    machine: Machine, needs: list[ModelNeed], engine
) -> tuple[dict[str, Placement], BuildPlacement, list[str]]:
    gpus = machine.gpus
    cap = engine.gpu_memory_utilization or DEFAULT_CAP
    notes: list[str] = []
    if not needs:
        return {}, BuildPlacement("cuda", gpus=(gpus[0].index,), reason="no local engine"), notes
    if any(n.weight_bytes is None for n in needs):
        notes.append("a model's size is unknown (not downloaded): its memory is not checked")
    base, variants = needs[0], needs[1:]
    by_index = {g.index: g for g in gpus}
    base_tp = pick_tp(base, gpus, cap, base.tensor_parallel)
    tps = {v.name: pick_tp(v, gpus, cap, v.tensor_parallel) for v in variants}
    whole: dict[str, tuple[int, ...]] = {}  # engines with GPUs to themselves
    free = [g.index for g in gpus]
    single = len(gpus) == 1
    if not single:
        whole[base.name], free = tuple(free[:base_tp]), free[base_tp:]
    for v in sorted(variants, key=lambda v: -per_gpu(v, tps[v.name])):
        if tps[v.name] > 1:
            if len(free) < tps[v.name]:
                raise PlanError(
                    f"no room for {v.name}: it needs {tps[v.name]} whole GPUs (tensor parallel), "
                    f"{len(free)} are left: short by {tps[v.name] - len(free)}"
                )
            whole[v.name], free = tuple(free[: tps[v.name]]), free[tps[v.name] :]
    # Pack the single-GPU variants, largest first, onto the GPUs left (best fit).
    packed: dict[int, list[tuple[ModelNeed, float]]] = {i: [] for i in free}
    if single:
        packed = {gpus[0].index: []}
    for v in sorted(variants, key=lambda v: -per_gpu(v, 1)):
        if tps[v.name] > 1:
            continue
        room = {i: cap - sum(f for _, f in packed[i]) for i in packed}
        frac = {i: _fraction_up(per_gpu(v, 1), by_index[i]) for i in packed}
        fits = [i for i in packed if frac[i] <= room[i] + 1e-9]
        if not fits:
            best = max(room.values(), default=0.0)
            raise PlanError(
                f"no room for {v.name}: it needs {per_gpu(v, 1) / GIB:.1f} GiB on one GPU; "
                + (f"the most left on a GPU the base does not use is {best:.2f} of it"
                   if packed else "every GPU is taken by the base or tensor-parallel groups")
                + (f": short by {(per_gpu(v, 1) - best * gpus[0].memory_bytes) / GIB:.1f} GiB"
                   if packed else f": {len(gpus)} GPU(s) in all")
            )  # fmt: skip
        i = min(fits, key=lambda i: room[i] - frac[i])
        packed[i].append((v, frac[i]))

    # Builds: a GPU nobody uses; else a share of a GPU kept free; else the CPU.
    reserve_at: int | None = None
    idle = [i for i in packed if not packed[i]] if not single else []
    builds = None
    if idle:
        builds = BuildPlacement("cuda", gpus=(idle[0],), reason="a GPU no engine uses")
    elif variants and engine.build_gpu_fraction > 0:
        rooms = {i: cap - sum(f for _, f in packed[i]) for i in packed}
        if single:
            base_left = cap - sum(f for _, f in packed[gpus[0].index]) - engine.build_gpu_fraction
            if base_left * gpus[0].memory_bytes >= per_gpu(base, 1):
                reserve_at = gpus[0].index
        else:
            ok = [i for i in packed if rooms[i] >= engine.build_gpu_fraction]
            reserve_at = max(ok, key=lambda i: rooms[i]) if ok else None
        if reserve_at is not None:
            builds = BuildPlacement(
                "cuda", gpus=(reserve_at,), memory_fraction=engine.build_gpu_fraction,
                reason=f"{engine.build_gpu_fraction:g} of GPU {reserve_at} is kept for builds",
            )  # fmt: skip
    if builds is None:
        builds = BuildPlacement(
            "cpu", (), reason="no GPU memory to spare for builds: they run on the CPU"
        )

    engines: dict[str, Placement] = {}
    if single:
        index = gpus[0].index
        on_it = packed[index]
        reserve = engine.build_gpu_fraction if reserve_at == index else 0.0
        left = math.floor(100 * (cap - reserve - sum(f for _, f in on_it)) + 1e-6) / 100
        if left * gpus[0].memory_bytes < per_gpu(base, 1):
            short = per_gpu(base, 1) - left * gpus[0].memory_bytes
            raise PlanError(
                f"{base.name} needs {per_gpu(base, 1) / GIB:.1f} GiB on GPU {index}; the "
                f"variants leave it {left:.2f} of the GPU ({left * gpus[0].memory_bytes / GIB:.1f}"
                f" GiB): short by {short / GIB:.1f} GiB (declare fewer variants)"
            )
        names = [v.name for v, _ in on_it]
        engines[base.name] = gpu_placement(base, (index,), left, 1, names)
    else:
        engines[base.name] = gpu_placement(base, whole[base.name], cap, base_tp)
    for v in variants:
        if v.name in whole:
            engines[v.name] = gpu_placement(v, whole[v.name], cap, tps[v.name])
            continue
        index, frac = next((i, f) for i, vs in packed.items() for w, f in vs if w is v)
        mates = [w.name for w, _ in packed[index] if w is not v]
        if single:
            mates = [base.name, *mates]
        engines[v.name] = gpu_placement(v, (index,), frac, 1, mates)
    return engines, builds, notes
