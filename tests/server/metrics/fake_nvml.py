"""FakeNvml: a TEST DOUBLE for the pynvml module (nvidia-ml-py), for machines without an NVIDIA
GPU. It answers the NVML calls server/metrics/gpu.py makes, in NVML's units (bytes, milliwatts,
millijoules since driver load, percent, degrees Celsius), from GPUs the test describes and
changes between scrapes. It is not NVML: the real path runs on a GPU (make gpu-check).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace


class FakeNVMLError(Exception):
    """Stands for pynvml.NVMLError (e.g. NVMLError_NotSupported)."""


@dataclass
class FakeGpu:
    name: str = "NVIDIA Fake H200"
    memory_used: int = 10 * 2**30
    memory_total: int = 141 * 2**30
    power_mw: int | None = 250_000
    energy_mj: int | None = 1_000_000
    utilization_pct: int | None = 50
    temperature_c: int | None = 40
    processes: dict[int, int] = field(default_factory=dict)  # pid -> GPU memory bytes


class FakeNvml:
    """A test double of the pynvml module: pass it to Nvml.open(module=FakeNvml(...))."""

    def __init__(self, gpus: list[FakeGpu], fail_init: bool = False):
        self.gpus = gpus
        self.fail_init = fail_init
        self.initialized = False

    @staticmethod
    def _value(value):
        if value is None:
            raise FakeNVMLError("Not Supported")
        return value

    def nvmlInit(self) -> None:  # noqa: N802 - pynvml's names
        if self.fail_init:
            raise FakeNVMLError("NVML Shared Library Not Found")
        self.initialized = True

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:  # noqa: N802
        return self.gpus[index]

    def nvmlDeviceGetName(self, handle: FakeGpu) -> str:  # noqa: N802
        return handle.name

    def nvmlDeviceGetMemoryInfo(self, handle: FakeGpu) -> SimpleNamespace:  # noqa: N802
        return SimpleNamespace(
            used=handle.memory_used,
            total=handle.memory_total,
            free=handle.memory_total - handle.memory_used,
        )

    def nvmlDeviceGetPowerUsage(self, handle: FakeGpu) -> int:  # noqa: N802
        return self._value(handle.power_mw)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: FakeGpu) -> int:  # noqa: N802
        return self._value(handle.energy_mj)

    def nvmlDeviceGetUtilizationRates(self, handle: FakeGpu) -> SimpleNamespace:  # noqa: N802
        return SimpleNamespace(gpu=self._value(handle.utilization_pct), memory=0)

    def nvmlDeviceGetTemperature(self, handle: FakeGpu, sensor: int) -> int:  # noqa: N802
        assert sensor == 0  # NVML_TEMPERATURE_GPU
        return self._value(handle.temperature_c)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeGpu) -> list:  # noqa: N802
        return [SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in handle.processes.items()]
