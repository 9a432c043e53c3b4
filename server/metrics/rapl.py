"""CPU package energy from RAPL (/sys/class/powercap), where the kernel exposes it readably.

Many machines (these CI machines included) have no powercap at all, or make energy_uj readable
by root only: then `read_rapl` returns {} and no power series exist.
"""

from __future__ import annotations

from pathlib import Path

POWERCAP = Path("/sys/class/powercap")


def read_rapl(root: Path = POWERCAP) -> dict[str, float]:
    """Cumulative joules per top-level RAPL zone (package-0, ...)."""
    zones = {}
    for zone in sorted(root.glob("intel-rapl:*")):
        if zone.name.count(":") != 1:  # sub-zones (core, uncore) are inside their package
            continue
        try:
            name = (zone / "name").read_text().strip()
            zones[name] = int((zone / "energy_uj").read_text()) / 1e6
        except (OSError, ValueError):
            continue
    return zones
