"""Placement: which cores, NUMA node or GPUs each engine gets, and where builds run.

`plan(machine, models, settings)` is a pure function (tests give it fake machines);
`plan_for(settings)` detects this machine and reads the declared models; `Placer` keeps the
plan of a running gateway. README "Placement" explains the rules.
"""

from server.placement.machine import Gpu, Machine, NumaNode, detect
from server.placement.needs import ModelNeed, model_needs, size_ratio
from server.placement.plan import BuildPlacement, Placement, Plan, PlanError, table
from server.placement.planner import Placer, plan, plan_for

__all__ = [
    "BuildPlacement",
    "Gpu",
    "Machine",
    "ModelNeed",
    "NumaNode",
    "Placement",
    "Placer",
    "Plan",
    "PlanError",
    "detect",
    "model_needs",
    "plan",
    "plan_for",
    "size_ratio",
    "table",
]
