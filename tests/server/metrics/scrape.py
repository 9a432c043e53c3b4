"""Read a registry the way Prometheus does: its text exposition, parsed back into samples."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted label items) -> value, from one generate_latest()."""
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def names(samples: dict) -> set[str]:
    return {name for name, _ in samples}


def of(samples: dict, name: str) -> dict[tuple, float]:
    """The samples of one series name, by their label items."""
    return {labels: v for (n, labels), v in samples.items() if n == name}
