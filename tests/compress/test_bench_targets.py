"""bench/compress_targets.py's arithmetic: a missed target says by how much, and the budget
curve's extrapolation to the router's floor."""

from __future__ import annotations

import math

from bench.compress_targets import TARGETS, floor_budget, verdict
from compress import recipes


def test_verdict_names_the_miss_in_points():
    assert verdict(0.015, 0.02) == "met"
    assert verdict(0.408, 0.25) == "MISSED by 15.8 points"
    assert verdict(1.34, 1.25, higher_is_better=True) == "met"
    assert verdict(None, 0.25) == "report"


def test_floor_budget_follows_a_log_linear_rise():
    # top-1 = 0.6 + 0.1 * ln(minutes / 30): reaches 0.9 at 30 * e^3 minutes.
    points = [(m, 0.6 + 0.1 * math.log(m / 30)) for m in (30, 60, 120)]
    assert math.isclose(floor_budget(points, 0.9), 30 * math.e**3, rel_tol=1e-9)


def test_floor_budget_refuses_a_flat_or_falling_curve():
    assert floor_budget([(30, 0.7), (60, 0.7), (120, 0.7)], 0.9) is None
    assert floor_budget([(30, 0.7), (60, 0.68)], 0.9) is None
    assert floor_budget([(30, 0.7)], 0.9) is None


def test_the_pure_kl_ablation_differs_from_the_named_recipe_only_in_the_hard_label_term():
    named = recipes.load_recipe("prune-0.25+distill").spec()["steps"]
    ablation = recipes.load_recipe(TARGETS["prune-0.25+distill-kl"].recipe).spec()["steps"]
    assert ablation[1]["hard_label_weight"] == 0.0 and named[1]["hard_label_weight"] > 0
    ablation[1]["hard_label_weight"] = named[1]["hard_label_weight"]
    assert ablation == named
