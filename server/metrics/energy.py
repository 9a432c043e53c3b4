"""Energy per variant: each device's energy between two scrapes, shared among the variants
on it by their share of the tokens generated in that interval.

A variant that generated nothing in the interval gets nothing; energy spent while no variant
generated anything goes to variant="idle", so that the per-variant counters add up to the
device's energy. Joules per token for a variant is then
rate(leanserve_energy_joules_total{variant=V}) / rate(leanserve_generation_tokens_total{variant=V}).
Counters only grow: a device counter that goes backwards (driver reload) is taken as a restart.
"""

from __future__ import annotations

from dataclasses import dataclass, field

IDLE = "idle"


@dataclass
class EnergyAccountant:
    last_energy: dict[str, float] = field(default_factory=dict)  # device -> joules
    last_tokens: dict[str, float] = field(default_factory=dict)  # variant -> tokens
    joules: dict[str, float] = field(default_factory=dict)  # variant -> attributed joules

    def update(
        self,
        device_energy: dict[str, float],
        device_variants: dict[str, list[str]],
        tokens: dict[str, float],
    ) -> dict[str, float]:
        """Attribute the energy since the last call; returns the cumulative joules per variant."""
        # A variant not seen before had generated nothing: its tokens so far are all new.
        generated = {v: max(0.0, t - self.last_tokens.get(v, 0.0)) for v, t in tokens.items()}
        for device, energy in device_energy.items():
            previous = self.last_energy.get(device)
            self.last_energy[device] = energy
            if previous is None:
                continue
            spent = energy - previous if energy >= previous else energy
            variants = device_variants.get(device, [])
            total = sum(generated.get(v, 0.0) for v in variants)
            if total <= 0:
                self.joules[IDLE] = self.joules.get(IDLE, 0.0) + spent
                continue
            for v in variants:
                share = generated.get(v, 0.0) / total
                if share > 0:
                    self.joules[v] = self.joules.get(v, 0.0) + spent * share
        self.last_tokens = dict(tokens)
        return dict(self.joules)
