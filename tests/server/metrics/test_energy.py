"""Energy per variant (server/metrics/energy.py) and the GPU series (gpu.py, resources.py).

The GPU comes from FakeNvml, a TEST DOUBLE of the pynvml module (tests/server/metrics/
fake_nvml.py), since these machines have no NVIDIA GPU; the engines are real processes leading
their own process groups, mapped to GPUs through the double's compute-process lists, as NVML
lists engine PIDs on a real GPU. The real NVML path runs on a GPU: make gpu-check.
"""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from server.metrics.energy import IDLE, EnergyAccountant
from server.metrics.gpu import Nvml
from server.metrics.registry import Metrics
from server.metrics.resources import ResourceCollector
from tests.server.metrics.fake_nvml import FakeGpu, FakeNvml
from tests.server.metrics.scrape import names, of, scrape

GIB = 2**30


# -- the accountant alone ------------------------------------------------------------------------
def test_energy_is_split_by_token_share_per_device():
    acc = EnergyAccountant()
    devices = {"gpu:0": ["a", "b"], "gpu:1": ["b"]}
    assert acc.update({"gpu:0": 1000.0, "gpu:1": 500.0}, devices, {"a": 0, "b": 0}) == {}
    joules = acc.update({"gpu:0": 1400.0, "gpu:1": 700.0}, devices, {"a": 30, "b": 10})
    # gpu:0 spent 400 J: a made 30 of its 40 tokens, b 10; gpu:1 spent 200 J, all b's.
    assert joules == pytest.approx({"a": 300.0, "b": 100.0 + 200.0})


def test_a_variant_first_seen_between_scrapes_gets_its_share():
    """The gateway's token counts start empty: a variant's first tokens are all new tokens."""
    acc = EnergyAccountant()
    acc.update({"gpu:0": 0.0}, {"gpu:0": ["a"]}, {})
    joules = acc.update({"gpu:0": 60.0}, {"gpu:0": ["a"]}, {"a": 6})
    assert joules == pytest.approx({"a": 60.0})


def test_energy_with_no_tokens_goes_to_idle_and_totals_add_up():
    acc = EnergyAccountant()
    devices = {"gpu:0": ["a", "b"]}
    acc.update({"gpu:0": 0.0}, devices, {"a": 0, "b": 0})
    acc.update({"gpu:0": 50.0}, devices, {"a": 0, "b": 0})  # nobody generated: idle
    joules = acc.update({"gpu:0": 150.0}, devices, {"a": 5, "b": 15})
    assert joules == pytest.approx({IDLE: 50.0, "a": 25.0, "b": 75.0})
    assert sum(joules.values()) == pytest.approx(150.0)  # every joule is attributed once


def test_tokens_of_a_variant_on_another_device_take_no_share():
    acc = EnergyAccountant()
    acc.update({"gpu:0": 0.0}, {"gpu:0": ["a"]}, {"a": 0, "b": 0})
    joules = acc.update({"gpu:0": 90.0}, {"gpu:0": ["a"]}, {"a": 1, "b": 1000})
    assert joules == pytest.approx({"a": 90.0})


def test_a_device_counter_that_goes_back_is_a_restart():
    acc = EnergyAccountant()
    acc.update({"gpu:0": 5000.0}, {"gpu:0": ["a"]}, {"a": 0})
    joules = acc.update({"gpu:0": 40.0}, {"gpu:0": ["a"]}, {"a": 4})  # driver reloaded
    assert joules == pytest.approx({"a": 40.0})  # counted from zero, never negative


# -- the collector over the test double ----------------------------------------------------------
def test_gpu_series_and_joules_by_token_share(engine_registry):
    backends = engine_registry("base", "base:w8a8")
    pid = {name: b.engine.pid for name, b in backends.backends.items()}
    gpus = [
        FakeGpu(
            memory_used=30 * GIB,
            power_mw=412_500,
            energy_mj=2_000_000,
            utilization_pct=87,
            temperature_c=61,
            processes={pid["base"]: 12 * GIB, pid["base:w8a8"]: 6 * GIB},
        ),
        # A second card that reads no power, temperature or utilization (NVML: Not Supported):
        # those series lack it, the others have it.
        FakeGpu(
            memory_used=8 * GIB,
            power_mw=None,
            energy_mj=500_000,
            utilization_pct=None,
            temperature_c=None,
            processes={pid["base:w8a8"]: 7 * GIB},
        ),
    ]
    fake = FakeNvml(gpus)
    nvml = Nvml.open(module=fake)
    assert fake.initialized and nvml is not None
    metrics = Metrics()
    registry = CollectorRegistry()
    registry.register(ResourceCollector(backends, metrics, nvml, rapl=lambda: {}))

    first = scrape(registry)
    gpu = {"0": (("gpu", "0"),), "1": (("gpu", "1"),)}
    assert of(first, "leanserve_gpu_memory_used_bytes") == {gpu["0"]: 30 * GIB, gpu["1"]: 8 * GIB}
    assert of(first, "leanserve_gpu_memory_total_bytes") == {g: 141 * GIB for g in gpu.values()}
    assert of(first, "leanserve_gpu_power_watts") == {gpu["0"]: 412.5}  # milliwatts -> watts
    assert of(first, "leanserve_gpu_utilization_ratio") == {gpu["0"]: 0.87}
    assert of(first, "leanserve_gpu_temperature_celsius") == {gpu["0"]: 61.0}
    assert of(first, "leanserve_gpu_energy_joules_total") == {gpu["0"]: 2000.0, gpu["1"]: 500.0}
    assert of(first, "leanserve_engine_gpu_memory_bytes") == {
        (("gpu", "0"), ("variant", "base")): 12 * GIB,
        (("gpu", "0"), ("variant", "base:w8a8")): 6 * GIB,
        (("gpu", "1"), ("variant", "base:w8a8")): 7 * GIB,
    }
    # The first scrape has no interval to share yet.
    assert "leanserve_energy_joules_total" not in names(first)

    # Between two scrapes: base generates 300 tokens and w8a8 100; GPU 0 spends 400 J (both
    # variants on it), GPU 1 spends 50 J (w8a8 alone).
    metrics.record_usage("base", {"prompt_tokens": 10, "completion_tokens": 300})
    metrics.record_usage("base:w8a8", {"prompt_tokens": 10, "completion_tokens": 100})
    gpus[0].energy_mj += 400_000
    gpus[1].energy_mj += 50_000
    second = scrape(registry)
    energy = of(second, "leanserve_energy_joules_total")
    assert energy == pytest.approx(
        {(("variant", "base"),): 300.0, (("variant", "base:w8a8"),): 100.0 + 50.0}
    )

    # No tokens in the next interval: GPU energy goes to variant="idle"; the others stay.
    gpus[0].energy_mj += 20_000
    third = scrape(registry)
    assert of(third, "leanserve_energy_joules_total") == pytest.approx(
        {**energy, (("variant", IDLE),): 20.0}
    )
    # Joules per token, as the dashboard computes it, for the interval with tokens: 1 J/token.
    assert energy[(("variant", "base"),)] / 300 == pytest.approx(1.0)
