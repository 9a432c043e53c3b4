"""plan(machine, models, settings) -> Plan: a pure function; and the Placer that keeps a plan
while the gateway runs (variants added at run time fit in without moving anyone)."""

from __future__ import annotations

import dataclasses
import math

from server.placement import cpu, gpu
from server.placement.machine import Machine, detect
from server.placement.needs import GIB, ModelNeed, model_needs
from server.placement.plan import Placement, Plan, PlanError


def _engine_settings(settings):
    return getattr(settings, "engine", settings)


def device_for(machine: Machine, engine) -> str:
    if engine.device == "cuda" and not machine.gpus:
        raise PlanError("engine.device is cuda, but no NVIDIA GPU was found (NVML)")
    if engine.device == "auto":
        return "cuda" if machine.gpus else "cpu"
    return engine.device


def plan(machine: Machine, models: list[ModelNeed], settings) -> Plan:
    """Place `models` (the base first) on `machine`; `settings`: Settings or EngineSettings.

    Raises PlanError naming what does not fit and by how much.
    """
    engine = _engine_settings(settings)
    if models and models[0].role != "base":
        raise ValueError("the base comes first")
    device = device_for(machine, engine)
    if device == "cpu":
        engines, reserved, builds, notes = cpu.plan_cpus(machine, models, engine)
        return Plan(machine, "cpu", engines, builds, reserved, notes)
    engines, builds, notes = gpu.plan_gpus(machine, models, engine)
    return Plan(machine, "cuda", engines, builds, (), notes)


def plan_for(settings, machine: Machine | None = None) -> Plan:
    """The plan for this machine (detected) and the settings' base and declared variants."""
    engine = settings.engine
    machine = machine or detect(with_gpus=engine.device != "cpu", cpus=engine.cpus)
    return plan(machine, model_needs(settings), settings)


class Placer:
    """The plan of a running gateway. Declared variants take their planned place; a variant
    added at run time gets room nobody uses, or shares a variant's cores (CPU), or a GPU's
    free memory, and never anything of the base's beyond what sharing rules allow."""

    def __init__(self, current: Plan, settings):
        self.plan = current
        self.engine = _engine_settings(settings)

    def placement(self, name: str) -> Placement | None:
        return self.plan.engines.get(name)

    def release(self, name: str) -> None:
        self.plan.engines.pop(name, None)
        for other, p in list(self.plan.engines.items()):
            if name in p.shares_with:
                mates = tuple(m for m in p.shares_with if m != name)
                self.plan.engines[other] = dataclasses.replace(p, shares_with=mates)

    def place(self, need: ModelNeed) -> Placement:
        """The planned placement of `need`, or room for it now; raises PlanError (no room)."""
        if need.name in self.plan.engines:
            return self.plan.engines[need.name]
        if not self.plan.engines:
            raise PlanError("no local base: variants are served elsewhere")
        place = self._place_cpu if self.plan.device == "cpu" else self._place_gpu
        placement = place(need)
        for mate in placement.shares_with:
            p = self.plan.engines[mate]
            self.plan.engines[mate] = dataclasses.replace(
                p, shares_with=(*p.shares_with, need.name)
            )
        self.plan.engines[need.name] = placement
        return placement

    def _place_cpu(self, need: ModelNeed) -> Placement:
        engine, current = self.engine, self.plan
        nodes = cpu.usable_cores(current.machine, engine.cpus)
        base = next(p for p in current.engines.values() if p.role == "base")
        used = {c for p in current.engines.values() for c in p.cores}
        taken = used | set(current.reserved)
        spare = {node: [c for c in cores if not set(c) & taken] for node, cores in nodes}
        node = max(spare, key=lambda n: (len(spare[n]), -n))
        if spare[node]:  # cores nobody computes on: all of the node with the most
            return cpu._placement(need, node, spare[node], current.reserved, engine)
        memory = current.machine.memory_bytes
        in_use = sum(p.need_bytes or 0 for p in current.engines.values())
        need_bytes = (need.weight_bytes or 0) + need.kv_bytes
        if memory and in_use + need_bytes > memory:
            raise PlanError(
                f"no room for {need.name}: it needs {need_bytes / GIB:.1f} GiB of RAM, "
                f"{max(memory - in_use, 0) / GIB:.1f} GiB are left: short by "
                f"{(in_use + need_bytes - memory) / GIB:.1f} GiB"
            )
        if not engine.share_cores:
            raise PlanError(
                f"no room for {need.name}: every core is taken and engine.share_cores is false"
            )
        variants = [p for p in current.engines.values() if p.role == "variant"]
        own = [p for p in variants if not set(p.cores) & set(base.cores)]
        if own:  # share the cores of the variant with the fewest engines on them
            mate = min(own, key=lambda p: (len(p.shares_with), -len(p.cores)))
            cores = current.machine.cores(
                next(n for n in current.machine.nodes if n.id == mate.numa_node)
            )
            chosen = [c for c in cores if set(c) <= set(mate.cores)]
            shares = (mate.engine, *mate.shares_with)
            return cpu._placement(
                need, mate.numa_node, chosen, current.reserved, engine, shares, mate.priority
            )
        # Only the base's cores are left: share them at a lower priority.
        node_cores = current.machine.cores(
            next(n for n in current.machine.nodes if n.id == base.numa_node)
        )
        chosen = [c for c in node_cores if set(c) <= set(base.cores)]
        mates = tuple(p.engine for p in current.engines.values() if set(p.cores) & set(base.cores))
        nice = max(engine.nice, engine.shared_nice)
        return cpu._placement(need, base.numa_node, chosen, current.reserved, engine, mates, nice)

    def _place_gpu(self, need: ModelNeed) -> Placement:
        engine, current = self.engine, self.plan
        gpus = current.machine.gpus
        cap = engine.gpu_memory_utilization or gpu.DEFAULT_CAP
        tp = gpu.pick_tp(need, gpus, cap, None)
        base = next(p for p in current.engines.values() if p.role == "base")
        single = len(gpus) == 1
        whole = {i for p in current.engines.values() if p.tensor_parallel > 1 for i in p.gpus}
        if not single:
            whole |= set(base.gpus)
        builds = current.builds
        reserve = {i: builds.memory_fraction or 0.0 for i in builds.gpus}
        if builds.device == "cuda" and not builds.memory_fraction:
            whole |= set(builds.gpus)  # a GPU kept whole for builds
        used: dict[int, float] = {g.index: 0.0 for g in gpus}
        for p in current.engines.values():
            for i in p.gpus:
                used[i] += p.memory_fraction or 0.0
        if tp > 1:
            empty = [g.index for g in gpus if g.index not in whole and used[g.index] == 0]
            if len(empty) < tp:
                raise PlanError(
                    f"no room for {need.name}: it needs {tp} whole GPUs (tensor parallel), "
                    f"{len(empty)} are free: short by {tp - len(empty)}"
                )
            return gpu.gpu_placement(need, tuple(empty[:tp]), cap, tp)
        nbytes = gpu.per_gpu(need, 1)
        fits, most_free = [], 0.0
        for g in gpus:
            if single or g.index in whole:
                continue  # a single GPU's base took what the declared variants left
            left = cap - used[g.index] - reserve.get(g.index, 0.0)
            most_free = max(most_free, left * g.memory_bytes)
            frac = math.ceil(100 * nbytes / g.memory_bytes) / 100
            if frac <= left + 1e-9:
                fits.append((left - frac, g.index, frac))
        if not fits:
            raise PlanError(
                f"no room for {need.name}: it needs {nbytes / GIB:.1f} GiB on one GPU; the most "
                f"free on a GPU that serves no base is {most_free / GIB:.1f} GiB: short by "
                f"{(nbytes - most_free) / GIB:.1f} GiB (the base keeps its memory)"
            )
        _, index, frac = min(fits)
        mates = [p.engine for p in current.engines.values() if index in p.gpus]
        return gpu.gpu_placement(need, (index,), frac, 1, mates)
