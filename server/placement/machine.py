"""The machine engines are placed on: CPU cores grouped by NUMA node, GPUs with their memory.

`detect()` reads it from the OS (/sys/devices/system/node, the cores this process may use)
and from NVML (server/metrics/gpu.py's wrapper); tests build a Machine by hand. The planner
itself never reads the OS: it is a pure function of a Machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from compress.vllm_command import detect_cpu_avx512, detect_cpu_bf16

SYS_NODES = Path("/sys/devices/system/node")
SYS_CPUS = Path("/sys/devices/system/cpu")


@dataclass(frozen=True)
class NumaNode:
    id: int
    cpus: tuple[int, ...]  # logical CPUs of the node that this process may use


@dataclass(frozen=True)
class Gpu:
    index: int  # NVML's index (PCI bus order): what CUDA_VISIBLE_DEVICES names
    memory_bytes: int
    name: str = "gpu"


@dataclass(frozen=True)
class Machine:
    nodes: tuple[NumaNode, ...]
    gpus: tuple[Gpu, ...] = ()
    memory_bytes: int | None = None  # RAM
    # Logical CPU -> its physical core (SMT siblings share one). Absent: each CPU is a core.
    core_of: dict[int, int] = field(default_factory=dict)
    # The CPUs compute bf16 in hardware (AVX512-BF16 or AMX on x86, BF16 on Arm). Fakes in
    # tests have it, as the machines the defaults were measured on did.
    cpu_bf16: bool = True
    # x86 CPUs with AVX-512 (vLLM CPU's int4 kernel needs it, kernels.py); True on other CPUs.
    cpu_avx512: bool = True

    @property
    def cpus(self) -> tuple[int, ...]:
        return tuple(c for node in self.nodes for c in node.cpus)

    def cores(self, node: NumaNode) -> list[tuple[int, ...]]:
        """The node's physical cores, each as its logical CPUs, in CPU order."""
        groups: dict[int, list[int]] = {}
        for cpu in sorted(node.cpus):
            groups.setdefault(self.core_of.get(cpu, -1 - cpu), []).append(cpu)
        return sorted((tuple(g) for g in groups.values()), key=lambda g: g[0])

    @classmethod
    def simple(
        cls, cores_per_node: list[int], gpu_bytes: list[int] | tuple = (), memory_bytes=None
    ) -> Machine:
        """A machine with consecutive CPU numbers per node (tests, `--machine` examples)."""
        nodes, start = [], 0
        for i, n in enumerate(cores_per_node):
            nodes.append(NumaNode(i, tuple(range(start, start + n))))
            start += n
        gpus = tuple(Gpu(i, b, "gpu") for i, b in enumerate(gpu_bytes))
        return cls(tuple(nodes), gpus, memory_bytes)


def parse_cpulist(text: str) -> list[int]:
    """'0-3,8,10-11' -> [0, 1, 2, 3, 8, 10, 11] (the kernel's cpulist format)."""
    out: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        low, _, high = part.partition("-")
        out += range(int(low), int(high or low) + 1)
    return out


def format_cpulist(cpus: tuple[int, ...] | list[int]) -> str:
    """[0, 1, 2, 3, 8] -> '0-3,8': what VLLM_CPU_OMP_THREADS_BIND and taskset read."""
    ordered = sorted(set(cpus))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def detect_nodes(allowed: set[int], sys_nodes: Path = SYS_NODES) -> tuple[NumaNode, ...]:
    nodes = []
    for entry in sorted(sys_nodes.glob("node[0-9]*"), key=lambda p: int(p.name[4:])):
        cpus = tuple(c for c in parse_cpulist(_read(entry / "cpulist") or "") if c in allowed)
        if cpus:
            nodes.append(NumaNode(int(entry.name[4:]), cpus))
    if not nodes or set(c for n in nodes for c in n.cpus) != allowed:
        # No NUMA information (or it does not cover every allowed CPU): one node.
        return (NumaNode(0, tuple(sorted(allowed))),)
    return tuple(nodes)


def detect_cores(cpus: set[int], sys_cpus: Path = SYS_CPUS) -> dict[int, int]:
    """Logical CPU -> a physical core key (package and core id), where /sys tells it."""
    out: dict[int, int] = {}
    for cpu in cpus:
        topo = sys_cpus / f"cpu{cpu}" / "topology"
        core, package = _read(topo / "core_id"), _read(topo / "physical_package_id")
        if core is None or package is None:
            return {}
        out[cpu] = int(package) * 1_000_000 + int(core)
    return out


def memory_bytes() -> int | None:
    for line in (_read(Path("/proc/meminfo")) or "").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return None


def detect_gpus(nvml=None) -> tuple[Gpu, ...]:
    """GPUs from NVML; none where there is no driver. `nvml`: an opened Nvml (tests: a fake)."""
    if nvml is None:
        from server.metrics.gpu import Nvml

        nvml = Nvml.open()
    if nvml is None:
        return ()
    return tuple(Gpu(r.index, r.memory_total_bytes, r.name) for r in nvml.read())


def detect(nvml=None, with_gpus: bool = True, cpus: list[int] | None = None) -> Machine:
    """This machine; `cpus`: the cores the engines may use (engine.cpus), which may lie outside
    this process's own affinity (a gateway kept to other cores). Default: this process's."""
    allowed = set(cpus) if cpus else set(os.sched_getaffinity(0))
    return Machine(
        nodes=detect_nodes(allowed),
        gpus=detect_gpus(nvml) if with_gpus else (),
        memory_bytes=memory_bytes(),
        core_of=detect_cores(allowed),
        cpu_bf16=detect_cpu_bf16(),
        cpu_avx512=detect_cpu_avx512(),
    )
