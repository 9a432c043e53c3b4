"""Request rates and the routing split the status page shows, from the gateway's counters."""

from __future__ import annotations

from server.metrics.registry import Metrics
from server.ui.rates import RequestRates


def _answer(metrics: Metrics, variant: str, n: int, status: str = "200") -> None:
    metrics.requests.labels(variant, "chat", status).inc(n)


def test_rates_and_series_from_the_counters():
    metrics = Metrics()
    metrics.add_variant("base")
    rates = RequestRates(metrics, interval_s=5)
    rates.sample(now=0)
    _answer(metrics, "base", 10)
    _answer(metrics, "base", 5, "503")  # every answer counts, errors too
    rates.sample(now=5)
    _answer(metrics, "base", 5)
    rates.sample(now=10)
    _answer(metrics, "v", 4)  # a series that appears later starts from zero
    summary = rates.summary(now=12)
    assert summary["available"] is True
    base = summary["variants"]["base"]
    assert base["series"] == [3.0, 1.0]  # 15 in the first 5 s, 5 in the next
    assert base["rate_per_s"] == round(20 / 12, 4) and base["requests"] == 20
    assert summary["variants"]["v"]["requests"] == 4
    assert summary["window_s"] == 12


def test_rate_counts_only_the_last_minute():
    metrics = Metrics()
    rates = RequestRates(metrics, interval_s=30)
    rates.sample(now=0)
    _answer(metrics, "base", 100)
    rates.sample(now=30)
    rates.sample(now=60)
    _answer(metrics, "base", 6)
    summary = rates.summary(now=90)
    # From t=30 (the oldest sample within 60 s of now) to 90: 6 answers in 60 s.
    assert summary["variants"]["base"]["rate_per_s"] == 0.1
    assert summary["rate_window_s"] == 60
    assert summary["variants"]["base"]["requests"] == 106


def test_routing_split_by_policy_and_variant():
    metrics = Metrics()
    rates = RequestRates(metrics)
    metrics.routing_decisions.labels("cost", "base", "cost").inc(2)  # before the window
    rates.sample(now=0)
    metrics.routing_decisions.labels("cost", "base:w8a8", "cost").inc(6)
    metrics.routing_decisions.labels("cost", "base", "fallback").inc(1)
    metrics.routing_decisions.labels("quality", "base", "quality").inc(3)
    assert rates.summary(now=5)["routing"] == {
        "cost": {"base:w8a8": 6, "base": 1},
        "quality": {"base": 3},
    }


def test_the_ring_keeps_only_the_window():
    rates = RequestRates(Metrics(), interval_s=5, window_s=60)
    for t in range(0, 600, 5):
        rates.sample(now=t)
    assert len(rates.samples) == 13 and rates.samples[0].t == 535


def test_nothing_to_show_when_metrics_are_off():
    rates = RequestRates(Metrics(enabled=False))
    rates.sample(now=0)
    assert not rates.samples
    assert rates.summary(now=1) == {
        "available": False,
        "reason": "metrics are off (metrics_enabled: false)",
    }
