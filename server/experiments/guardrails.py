"""Guardrails: which non-control arms are shown worse than the control by more than a margin.

The statistics are stats.guardrail_breach's (always-valid, so checking every few seconds does
not inflate false alarms). For error_rate, a request counts as failed when it ended in an error
or when its arm's variant failed before the first token and another variant served it (a
fallback): either way the arm did not serve its users.
"""

from __future__ import annotations

from dataclasses import asdict, is_dataclass

from server.experiments import stats
from server.experiments.definitions import Experiment


def rows_for(metric: str, rows: list[dict], experiment: Experiment) -> list[dict]:
    if metric != "error_rate":
        return rows
    variants = {a["name"]: a["variant"] for a in experiment.arms}
    return [
        {**r, "error": "fallback"}
        if not r["error"] and r["arm"] in variants and r["variant"] != variants[r["arm"]]
        else r
        for r in rows
    ]


def breaches(experiment: Experiment, rows: list[dict]) -> list[tuple[str, object]]:
    """(arm, breach) for each arm still serving that breaches one of the guardrails (the first
    one it breaches)."""
    found = []
    for arm in experiment.arm_names:
        if arm == experiment.control or arm in experiment.arm_stops:
            continue
        for guardrail in experiment.guardrails:
            metric = guardrail["metric"]
            breach = stats.guardrail_breach(
                rows_for(metric, rows, experiment),
                experiment.control,
                arm,
                metric,
                guardrail["margin"],
            )
            if breach is not None:
                found.append((arm, breach))
                break
    return found


def stop_record(breach: object, margin: float, now: float) -> dict:
    """What the store keeps about an arm's stop: the breach's figures, the margin, when."""
    figures = asdict(breach) if is_dataclass(breach) else dict(vars(breach))
    return {**figures, "margin": margin, "at": now}


def margin_of(experiment: Experiment, metric: str) -> float:
    return next(g["margin"] for g in experiment.guardrails if g["metric"] == metric)
