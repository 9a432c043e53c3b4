"""GPU readings through NVML (nvidia-ml-py), taken at scrape time.

On a machine without an NVIDIA driver, `Nvml.open()` returns None and no GPU series exist at
all: an absent series says "no GPU", a zero would say "a GPU drawing nothing".
Energy comes from the driver's cumulative counter (millijoules since load), not from sampled
power: the power reading is a ~1 s average that lags a load step (docs/toolchain.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger("leanserve.metrics")


@dataclass
class GpuReading:
    index: int
    name: str
    memory_used_bytes: int
    memory_total_bytes: int
    power_watts: float | None
    energy_joules: float | None  # cumulative since the driver loaded
    utilization_ratio: float | None
    temperature_celsius: float | None
    process_memory_bytes: dict[int, int]  # pid -> GPU memory


class Nvml:
    """A thin wrapper over pynvml; each reading that the GPU does not support is None."""

    def __init__(self, pynvml):
        self.nv = pynvml

    @classmethod
    def open(cls, module=None) -> Nvml | None:
        try:
            if module is None:
                import pynvml as module
            module.nvmlInit()
            if module.nvmlDeviceGetCount() == 0:
                return None
        except Exception as exc:  # no driver, no library, no device: all mean "no GPU"
            log.info("no NVIDIA GPU readings: %s", exc)
            return None
        return cls(module)

    def _try(self, fn, *args):
        try:
            return fn(*args)
        except Exception:
            return None

    def read(self) -> list[GpuReading]:
        nv = self.nv
        readings = []
        for index in range(nv.nvmlDeviceGetCount()):
            h = nv.nvmlDeviceGetHandleByIndex(index)
            memory = nv.nvmlDeviceGetMemoryInfo(h)
            name = self._try(nv.nvmlDeviceGetName, h) or f"gpu{index}"
            power_mw = self._try(nv.nvmlDeviceGetPowerUsage, h)
            energy_mj = self._try(nv.nvmlDeviceGetTotalEnergyConsumption, h)
            util = self._try(nv.nvmlDeviceGetUtilizationRates, h)
            temp = self._try(nv.nvmlDeviceGetTemperature, h, 0)  # NVML_TEMPERATURE_GPU
            procs = self._try(nv.nvmlDeviceGetComputeRunningProcesses, h) or []
            readings.append(
                GpuReading(
                    index=index,
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    memory_used_bytes=int(memory.used),
                    memory_total_bytes=int(memory.total),
                    power_watts=power_mw / 1000 if power_mw is not None else None,
                    energy_joules=energy_mj / 1000 if energy_mj is not None else None,
                    utilization_ratio=util.gpu / 100 if util is not None else None,
                    temperature_celsius=float(temp) if temp is not None else None,
                    process_memory_bytes={
                        int(p.pid): int(p.usedGpuMemory or 0) for p in procs if p.usedGpuMemory
                    },
                )
            )
        return readings
