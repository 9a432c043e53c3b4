"""The placement plan's types: per engine a Placement, where builds run, and the refusal."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Literal

from server.placement.machine import Machine, format_cpulist

GIB = 2**30


class PlanError(ValueError):
    """The engines do not fit the machine; the message names what does not fit and by how much."""


@dataclass(frozen=True)
class Placement:
    engine: str  # public model name
    role: Literal["base", "variant"]
    device: Literal["cpu", "cuda"]
    cores: tuple[int, ...] = ()  # CPU: the cores the engine computes on (all on one NUMA node)
    numa_node: int | None = None
    threads: tuple[int, ...] = ()  # CPU: one per physical core, vLLM's OpenMP threads bind there
    affinity: tuple[int, ...] = ()  # CPU: where the engine's processes may run; (): anywhere
    gpus: tuple[int, ...] = ()  # GPU: NVML indices
    memory_fraction: float | None = None  # GPU: --gpu-memory-utilization on each of its GPUs
    tensor_parallel: int = 1
    shares_with: tuple[str, ...] = ()  # engines computing on the same cores or GPU
    priority: int = 0  # nice value of the engine's compute processes
    need_bytes: int | None = None  # weights + KV budget (+ GPU overhead), per GPU on GPUs
    estimated: bool = False  # need_bytes from the recipe table (needs.py), not a card
    env: dict[str, str] = field(default_factory=dict)
    flags: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        out = asdict(self)
        for key in ("cores", "threads", "affinity", "gpus", "shares_with", "flags"):
            out[key] = list(out[key])
        return out

    def dtype(self) -> str:
        """The --dtype its flags set, else "auto" (the checkpoint's)."""
        flags = list(self.flags)
        return flags[flags.index("--dtype") + 1] if "--dtype" in flags[:-1] else "auto"

    def labels(self) -> dict[str, str]:
        """Prometheus labels of leanserve_engine_placement_info (strings, bounded)."""
        return {
            "device": self.device,
            "cores": format_cpulist(self.cores),
            "numa_node": "" if self.numa_node is None else str(self.numa_node),
            "gpus": ",".join(map(str, self.gpus)),
            "tp": str(self.tensor_parallel),
            "memory_fraction": "" if self.memory_fraction is None else f"{self.memory_fraction:g}",
            "shares_with": ",".join(self.shares_with),
            "nice": str(self.priority),
        }


@dataclass(frozen=True)
class BuildPlacement:
    """Where compress jobs run: a device, and there cores or GPUs, at a low priority."""

    device: Literal["cpu", "cuda"]
    cores: tuple[int, ...] = ()  # () on GPUs: any core
    gpus: tuple[int, ...] = ()
    memory_fraction: float | None = None  # GPU memory kept free for builds on a shared GPU
    priority: int = 19
    reason: str = ""

    def env(self) -> dict[str, str]:
        if self.device == "cuda":
            return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": _ids(self.gpus)}
        return {}

    def as_dict(self) -> dict:
        out = asdict(self)
        out["cores"], out["gpus"] = list(self.cores), list(self.gpus)
        return out

    def preexec(self):
        """What a build's process runs before exec: keep to the build's cores, at its nice."""
        cores, priority = self.cores, self.priority

        def setup() -> None:
            if cores:
                os.sched_setaffinity(0, cores)
            os.nice(priority)

        return setup


@dataclass
class Plan:
    machine: Machine
    device: Literal["cpu", "cuda"]
    engines: dict[str, Placement]  # the base first
    builds: BuildPlacement
    reserved: tuple[int, ...] = ()  # cores kept for the gateway (and the engines' API servers)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "device": self.device,
            "reserved_cores": list(self.reserved),
            "engines": {name: p.as_dict() for name, p in self.engines.items()},
            "builds": self.builds.as_dict(),
            "notes": list(self.notes),
        }


def _ids(values) -> str:
    return ",".join(str(v) for v in values)


def gib(n: int | float | None) -> str:
    return "?" if n is None else f"{n / GIB:.1f} GiB"


def table(plan: Plan) -> str:
    """The plan as a text table (`leanserve plan`)."""
    m = plan.machine
    gpus = ", ".join(f"{g.index}={gib(g.memory_bytes)}" for g in m.gpus)
    head = [
        f"machine: {len(m.cpus)} CPUs on {len(m.nodes)} NUMA node(s)"
        + (f", RAM {gib(m.memory_bytes)}" if m.memory_bytes else "")
        + (f", {len(m.gpus)} GPU(s): {gpus}" if m.gpus else ", no GPU"),
        f"engines on: {plan.device}"
        + (f"; reserved for the gateway: cores {format_cpulist(plan.reserved)}" if plan.reserved
           else "; no core reserved for the gateway"),
    ]  # fmt: skip
    if plan.device == "cpu":
        cols = ["engine", "role", "node", "cores", "omp threads", "nice", "dtype", "shares with",
                "needs"]  # fmt: skip
        rows = [
            [p.engine, p.role, str(p.numa_node), format_cpulist(p.cores) or "-",
             str(len(p.threads)), str(p.priority), p.dtype(), ",".join(p.shares_with) or "-",
             gib(p.need_bytes) + (" (est.)" if p.estimated else "")]
            for p in plan.engines.values()
        ]  # fmt: skip
    else:
        cols = ["engine", "role", "gpus", "tp", "memory fraction", "shares with", "needs/GPU"]
        rows = [
            [p.engine, p.role, _ids(p.gpus), str(p.tensor_parallel),
             f"{p.memory_fraction:.2f}" if p.memory_fraction is not None else "-",
             ",".join(p.shares_with) or "-",
             gib(p.need_bytes) + (" (est.)" if p.estimated else "")]
            for p in plan.engines.values()
        ]  # fmt: skip
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]
    line = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) for c, w in zip(cells, widths, strict=True)
    ).rstrip()
    body = [line(cols), line(["-" * w for w in widths]), *(line(r) for r in rows)]
    if not rows:
        body = ["(no local engine)"]
    b = plan.builds
    where = f"GPUs {_ids(b.gpus)}" if b.device == "cuda" else f"cores {format_cpulist(b.cores)}"
    extra = f", {b.memory_fraction:.2f} of the GPU kept for them" if b.memory_fraction else ""
    builds = [f"builds: {b.device} on {where}{extra}, nice {b.priority} ({b.reason})"]
    notes = [f"note: {n}" for n in plan.notes]
    return "\n".join(head + [""] + body + [""] + builds + notes)
