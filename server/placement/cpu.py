"""CPU placement: which cores each engine computes on, which it shares, and at what priority.

Rules (README "Placement"):
- The gateway keeps `engine.reserved_cpus` cores (default one, none on a one-core machine or
  when `engine.cpus` already leaves cores out): the first cores of the first NUMA node. vLLM's
  own binding reserves one core per engine the same way, for its API server; here the engines'
  API servers may run on the reserved cores too (`engine.api_server_on_reserved`), their
  compute threads never do.
- Every engine computes on cores of one NUMA node (memory stays local). The base gets its share
  first: the node with the most free cores, whole. With variants on a machine of one node it
  gets its weight's share of that node (`engine.weights`, default: as much as all variants
  together), at least one core.
- Variants share the other nodes' cores (or the rest of the base's only node) by weight. No two
  engines compute on the same cores unless there are fewer cores than engines: then variants
  share with each other, and only on a machine with one free core with the base, at a lower
  priority (`engine.shared_nice`) so an idle or busy variant cannot slow the base.
  `engine.share_cores: false` refuses such a plan instead.
- vLLM's OpenMP threads: one per physical core (the first logical CPU of each), as vLLM's own
  binding does on x86: two threads on SMT siblings fight for one core's units.
- Builds run on cores no engine uses, else on the variants' own cores, else anywhere; at nice 19.
"""

from __future__ import annotations

from compress.vllm_command import cpu_dtype_flags
from server.placement.machine import Machine, format_cpulist
from server.placement.needs import GIB, ModelNeed
from server.placement.plan import BuildPlacement, Placement, PlanError

Core = tuple[int, ...]  # one physical core: its logical CPUs


def usable_cores(machine: Machine, only: list[int] | None) -> list[tuple[int, list[Core]]]:
    """(node id, its physical cores) for every node with a core the engines may use."""
    out = []
    for node in machine.nodes:
        cores = [c for c in machine.cores(node) if only is None or set(c) <= set(only)]
        if cores:
            out.append((node.id, cores))
    return out


def default_reserved(total: int, engine) -> int:
    if engine.reserved_cpus is not None:
        return engine.reserved_cpus
    return 0 if engine.cpus or total <= 1 else 1


def _flat(cores: list[Core]) -> tuple[int, ...]:
    return tuple(sorted(c for core in cores for c in core))


def split(cores: list[Core], members: list[ModelNeed]) -> list[tuple[ModelNeed, list[Core]]]:
    """Share `cores` between `members` by weight, each at least one core, in contiguous blocks;
    with fewer cores than members, members take turns on the cores (and then share them)."""
    if len(cores) < len(members):
        return [(m, [cores[i % len(cores)]]) for i, m in enumerate(members)]
    counts = [1] * len(members)
    spare = len(cores) - len(members)
    total = sum(m.weight for m in members)
    exact = [spare * m.weight / total for m in members]
    for i, e in enumerate(exact):
        counts[i] += int(e)
    left = len(cores) - sum(counts)
    for i in sorted(range(len(members)), key=lambda i: exact[i] - int(exact[i]), reverse=True)[
        :left
    ]:
        counts[i] += 1
    out, start = [], 0
    for m, n in zip(members, counts, strict=True):
        out.append((m, cores[start : start + n]))
        start += n
    return out


def _spread_over_nodes(
    pool: list[tuple[int, list[Core]]], variants: list[ModelNeed]
) -> dict[int, list[ModelNeed]]:
    """Which node each variant goes to: the heaviest first, each to the node with the most
    cores per unit of weight already there."""
    placed: dict[int, list[ModelNeed]] = {n: [] for n, _ in pool}
    size = dict(pool)
    for v in sorted(variants, key=lambda v: -v.weight):
        node = max(
            placed,
            key=lambda n: (len(size[n]) / (sum(x.weight for x in placed[n]) + v.weight), -n),
        )
        placed[node].append(v)
    return placed


def dtype_flags(machine: Machine, engine) -> tuple[str, ...]:
    """vLLM's --dtype for CPU engines: the setting where given; for auto, float32 on CPUs that
    only emulate bf16 (vLLM CPU 0.32 on an AVX2-only EPYC: 101 against 21 tokens/s at 32
    streams for the default model, BENCHMARKS.md), else the checkpoint's (no flag)."""
    if engine.dtype != "auto":
        return ("--dtype", engine.dtype)
    return tuple(cpu_dtype_flags(machine.cpu_bf16))


def _placement(
    need: ModelNeed, node: int, cores: list[Core], reserved: tuple[int, ...], engine,
    shares: tuple[str, ...] = (), priority: int = 0, flags: tuple[str, ...] = (),
) -> Placement:  # fmt: skip
    cpus = _flat(cores)
    threads = tuple(core[0] for core in cores)
    env = {"VLLM_CPU_KVCACHE_SPACE": f"{engine.kv_cache_gib:g}"}
    affinity: tuple[int, ...] = ()
    if engine.cpu_spread:
        env["VLLM_CPU_OMP_THREADS_BIND"] = format_cpulist(threads)
        affinity = tuple(sorted({*cpus, *(reserved if engine.api_server_on_reserved else ())}))
    need_bytes = None if need.weight_bytes is None else need.weight_bytes + need.kv_bytes
    return Placement(
        engine=need.name, role=need.role, device="cpu", cores=cpus, numa_node=node,
        threads=threads, affinity=affinity, shares_with=shares, priority=priority,
        need_bytes=need_bytes, estimated=need.estimated, env=env, flags=flags,
    )  # fmt: skip


def plan_cpus(
    machine: Machine, needs: list[ModelNeed], engine
) -> tuple[dict[str, Placement], tuple[int, ...], BuildPlacement, list[str]]:
    nodes = usable_cores(machine, engine.cpus)
    total = sum(len(c) for _, c in nodes)
    if total == 0:
        raise PlanError("no CPU core is left for the engines (engine.cpus names none of ours)")
    n_reserved = default_reserved(total, engine)
    if n_reserved >= total:
        raise PlanError(
            f"engine.reserved_cpus={n_reserved} leaves no core for the engines: they may use "
            f"{total} core(s); reserve at most {total - 1}"
        )
    reserved_cores: list[Core] = []
    free: dict[int, list[Core]] = {}
    for node, cores in nodes:
        take = min(n_reserved - len(reserved_cores), len(cores))
        reserved_cores += cores[:take]
        if cores[take:]:
            free[node] = cores[take:]
    reserved = _flat(reserved_cores)
    notes: list[str] = []
    if not needs:
        return {}, reserved, BuildPlacement("cpu", (), reason="no local engine"), notes
    base, variants = needs[0], needs[1:]
    base_node = max(free, key=lambda n: (len(free[n]), -n))
    others = [(n, free[n]) for n in free if n != base_node]
    k = len(free[base_node])
    shared_with_base = False
    if not variants:
        base_cores, pool = free[base_node], []
    elif others:
        base_cores, pool = free[base_node], others
    elif k >= 2:
        wanted = round(k * base.weight / (base.weight + sum(v.weight for v in variants)))
        n_base = min(max(wanted, 1), k - 1)
        base_cores, pool = free[base_node][:n_base], [(base_node, free[base_node][n_base:])]
    else:
        base_cores, pool, shared_with_base = free[base_node], [(base_node, free[base_node])], True
    engines_total = 1 + len(variants)
    pool_cores = sum(len(c) for _, c in pool)
    sharing = shared_with_base or pool_cores < len(variants)
    if sharing and not engine.share_cores:
        own = len(base_cores) + (0 if shared_with_base else pool_cores)
        raise PlanError(
            f"{engines_total} engines (the base and {len(variants)} variants) need "
            f"{engines_total} cores of their own; {own} core(s) are left after the "
            f"{len(reserved)} reserved for the gateway: short by {engines_total - own} "
            "(engine.share_cores: true lets variants share cores at a lower priority)"
        )

    placed: dict[str, Placement] = {}
    dtype = dtype_flags(machine, engine)
    by_node = _spread_over_nodes(pool, variants) if variants else {}
    pool_of = dict(pool)
    groups: list[tuple[ModelNeed, int, list[Core]]] = []
    for node, members in by_node.items():
        for need, cores in split(pool_of[node], members):
            groups.append((need, node, cores))
    variant_nice = max(engine.nice, engine.shared_nice) if shared_with_base else engine.nice
    for need, node, cores in groups:
        mates = tuple(
            other.name for other, n, c in groups if other is not need and n == node and c == cores
        )
        if shared_with_base:
            mates = (base.name, *mates)
        placed[need.name] = _placement(
            need, node, cores, reserved, engine, mates, variant_nice, dtype
        )
    base_mates = tuple(v.name for v in variants) if shared_with_base else ()
    base_placement = _placement(base, base_node, base_cores, reserved, engine, base_mates,
                                engine.nice, dtype)  # fmt: skip
    engines = {base.name: base_placement, **{v.name: placed[v.name] for v in variants}}
    if shared_with_base:
        notes.append(
            f"one core for {engines_total} engines: the variants share the base's core at "
            f"nice {variant_nice}, the base keeps priority"
        )
    elif sharing:
        notes.append(f"{len(variants)} variants on {pool_cores} core(s): some variants share")
    _check_memory(machine, list(engines.values()))
    used = {c for p in engines.values() for c in p.cores}
    spare = [c for _, cores in free.items() for core in cores for c in core if c not in used]
    variant_cores = {c for p in engines.values() if p.role == "variant" for c in p.cores}
    if spare:
        builds = BuildPlacement("cpu", tuple(spare), reason="cores no engine uses")
    elif variant_cores and not variant_cores & set(base_placement.cores):
        builds = BuildPlacement(
            "cpu", tuple(sorted(variant_cores)), reason="the variants' cores, never the base's"
        )
    else:
        builds = BuildPlacement(
            "cpu", machine_cpus(nodes),
            reason="every core, at the lowest priority: engines and gateway come first",
        )  # fmt: skip
    return engines, reserved, builds, notes


def machine_cpus(nodes: list[tuple[int, list[Core]]]) -> tuple[int, ...]:
    return tuple(sorted(c for _, cores in nodes for core in cores for c in core))


def _check_memory(machine: Machine, placements: list[Placement]) -> None:
    if not machine.memory_bytes:
        return
    need = sum(p.need_bytes or 0 for p in placements)
    if need > machine.memory_bytes:
        parts = ", ".join(f"{p.engine} {(p.need_bytes or 0) / GIB:.1f}" for p in placements)
        raise PlanError(
            f"the engines need {need / GIB:.1f} GiB of RAM for weights and KV cache ({parts}); "
            f"the machine has {machine.memory_bytes / GIB:.1f} GiB: short by "
            f"{(need - machine.memory_bytes) / GIB:.1f} GiB (lower engine.kv_cache_gib or "
            "declare fewer variants)"
        )
