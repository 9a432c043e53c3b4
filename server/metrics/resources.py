"""Scrape-time series about the machine: GPUs (NVML), CPU energy (RAPL), each local engine's
memory and CPU time, and energy per variant. Engines are found by process group: each local
engine leads its own group (see backends/engine_process.py)."""

from __future__ import annotations

import os

import psutil
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from server.metrics.energy import EnergyAccountant
from server.metrics.gpu import Nvml
from server.metrics.rapl import read_rapl


class ResourceCollector:
    def __init__(self, registry, metrics, nvml: Nvml | None, rapl=read_rapl):
        self.registry = registry  # backends, by public name
        self.metrics = metrics
        self.nvml = nvml
        self.rapl = rapl
        self.energy = EnergyAccountant()

    def _engine_groups(self) -> dict[int, str]:
        """Process group id -> variant name, for the engines this gateway started."""
        # list(): a worker thread runs this (metrics/refresher.py) while the loop may add or
        # remove a backend; copying the items is one step the loop cannot interleave with.
        backends = list(self.registry.backends.items())
        return {b.engine.pid: name for name, b in backends if b.engine.pid}

    def _processes_by_variant(self) -> dict[str, list[psutil.Process]]:
        groups = self._engine_groups()
        found: dict[str, list[psutil.Process]] = {v: [] for v in groups.values()}
        if not groups:
            return found
        for proc in psutil.process_iter():
            try:
                variant = groups.get(os.getpgid(proc.pid))
            except (ProcessLookupError, PermissionError):
                continue
            if variant is not None:
                found[variant].append(proc)
        return found

    def collect(self):
        procs = self._processes_by_variant()
        memory = GaugeMetricFamily(
            "leanserve_engine_memory_bytes",
            "Resident memory of the engine's processes.",
            labels=["variant"],
        )
        cpu = CounterMetricFamily(
            "leanserve_engine_cpu_seconds",
            "CPU time of the engine's processes.",
            labels=["variant"],
        )
        pid_variant = {}
        for variant, members in procs.items():
            rss, seconds = 0, 0.0
            for p in members:
                try:
                    with p.oneshot():
                        rss += p.memory_info().rss
                        t = p.cpu_times()
                        seconds += t.user + t.system
                    pid_variant[p.pid] = variant
                except psutil.Error:
                    continue
            memory.add_metric([variant], rss)
            cpu.add_metric([variant], seconds)
        yield memory
        yield cpu
        restarts = CounterMetricFamily(
            "leanserve_engine_restarts",
            "Times the variant's engine was restarted.",
            labels=["variant"],
        )
        for name, backend in list(self.registry.backends.items()):
            restarts.add_metric([name], backend.engine.restarts)
        yield restarts

        device_energy: dict[str, float] = {}
        device_variants: dict[str, list[str]] = {}
        if self.nvml is not None:
            yield from self._gpu_families(pid_variant, device_energy, device_variants)
        rapl = self.rapl()
        if rapl:
            family = CounterMetricFamily(
                "leanserve_cpu_energy_joules", "CPU package energy (RAPL).", labels=["zone"]
            )
            for zone, joules in rapl.items():
                family.add_metric([zone], joules)
                device_energy[f"rapl:{zone}"] = joules
                device_variants[f"rapl:{zone}"] = list(procs)
            yield family
        if device_energy:
            joules = self.energy.update(
                device_energy, device_variants, dict(self.metrics.tokens_by_variant)
            )
            family = CounterMetricFamily(
                "leanserve_energy_joules",
                "Device energy attributed to each variant by its share of generated tokens.",
                labels=["variant"],
            )
            for variant, value in sorted(joules.items()):
                family.add_metric([variant], value)
            yield family

    def _gpu_families(self, pid_variant, device_energy, device_variants):
        readings = self.nvml.read()

        def gauge(name: str, text: str, labels=("gpu",)) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, text, labels=list(labels))

        g = {
            "used": gauge("leanserve_gpu_memory_used_bytes", "GPU memory in use."),
            "total": gauge("leanserve_gpu_memory_total_bytes", "GPU memory."),
            "power": gauge("leanserve_gpu_power_watts", "GPU power draw (a ~1 s average)."),
            "util": gauge("leanserve_gpu_utilization_ratio", "GPU busy share, 0-1."),
            "temp": gauge("leanserve_gpu_temperature_celsius", "GPU temperature."),
            "proc": gauge(
                "leanserve_engine_gpu_memory_bytes",
                "GPU memory of an engine's processes.",
                ("variant", "gpu"),
            ),
        }
        energy = CounterMetricFamily(
            "leanserve_gpu_energy_joules", "GPU energy since the driver loaded.", labels=["gpu"]
        )
        for r in readings:
            gpu = str(r.index)
            g["used"].add_metric([gpu], r.memory_used_bytes)
            g["total"].add_metric([gpu], r.memory_total_bytes)
            if r.power_watts is not None:
                g["power"].add_metric([gpu], r.power_watts)
            if r.utilization_ratio is not None:
                g["util"].add_metric([gpu], r.utilization_ratio)
            if r.temperature_celsius is not None:
                g["temp"].add_metric([gpu], r.temperature_celsius)
            per_variant: dict[str, int] = {}
            for pid, used in r.process_memory_bytes.items():
                variant = pid_variant.get(pid)
                if variant is not None:
                    per_variant[variant] = per_variant.get(variant, 0) + used
            for variant, used in per_variant.items():
                g["proc"].add_metric([variant, gpu], used)
            if r.energy_joules is not None:
                energy.add_metric([gpu], r.energy_joules)
                device_energy[f"gpu:{gpu}"] = r.energy_joules
                device_variants[f"gpu:{gpu}"] = list(per_variant)
        yield from g.values()
        yield energy
