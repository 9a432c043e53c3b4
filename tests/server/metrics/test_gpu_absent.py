"""Without an NVIDIA GPU the GPU series are absent, not zero: no leanserve_gpu_* series, no
per-engine GPU memory and (without readable RAPL either) no leanserve_energy_joules_total, while
the engine's CPU-side series are there. An absent series says "no GPU"; a zero would say "a GPU
drawing nothing". Runs in a second, with no engine."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from server.metrics.gpu import Nvml
from server.metrics.rapl import read_rapl
from server.metrics.registry import Metrics
from server.metrics.resources import ResourceCollector
from tests.server.metrics.fake_nvml import FakeGpu, FakeNvml
from tests.server.metrics.scrape import names, of, scrape


def test_no_gpu_series_on_a_machine_without_nvml(engine_registry):
    nvml = Nvml.open()  # the real pynvml: no driver here
    if nvml is not None:
        pytest.skip("this machine has an NVIDIA GPU: the GPU-less case cannot be shown here")
    backends = engine_registry("base")
    metrics = Metrics()
    registry = CollectorRegistry()
    registry.register(ResourceCollector(backends, metrics, nvml))
    first = scrape(registry)
    metrics.record_usage("base", {"prompt_tokens": 5, "completion_tokens": 7})
    second = scrape(registry)  # energy needs two scrapes to have an interval to share

    for samples in (first, second):
        found = names(samples)
        assert not {n for n in found if n.startswith("leanserve_gpu_")}, found
        assert "leanserve_engine_gpu_memory_bytes" not in found
        # Without a GPU the engine's CPU-side series are still there.
        assert of(samples, "leanserve_engine_memory_bytes")[(("variant", "base"),)] > 0
        assert (("variant", "base"),) in of(samples, "leanserve_engine_cpu_seconds_total")
        if not read_rapl():  # these CPU machines expose no RAPL (docs/toolchain.md)
            assert "leanserve_energy_joules_total" not in found, found
            assert "leanserve_cpu_energy_joules_total" not in found, found


def test_open_says_no_gpu_for_a_missing_driver_or_no_device():
    assert Nvml.open(module=FakeNvml([], fail_init=True)) is None  # no driver
    assert Nvml.open(module=FakeNvml([])) is None  # a driver, no device
    assert Nvml.open(module=FakeNvml([FakeGpu()])) is not None
