"""Under the slo policy, engines that share CPU cores (on a 2-core machine every variant shares
the base's core) serve one at a time: a second busy engine on the same core adds no capacity,
and the lower-priority one starves. Engines sharing a GPU, or with cores of their own, are not
held back."""

from __future__ import annotations

import pytest

from server.errors import APIError
from server.placement.plan import Placement
from server.routing.policies import PolicyName
from server.routing.service import route
from server.settings import load_settings
from tests.server.quality.helpers import BASE, W4A16, W8A8, backend, registry

FAST_GOOD = {"quality": {"chat": {"top1_agreement": 0.95}}, "size": {"size_ratio": 0.5}}
SETTINGS = load_settings(variants=[], routing={"quality_floor": 0.9, "shed_load": True})


def placed(device: str = "cpu"):
    """The base and two variants on one core (or GPU), as the plan puts them on 2 cores."""
    names = (BASE, W8A8, W4A16)
    backends = [backend(BASE), backend(W8A8, FAST_GOOD), backend(W4A16, FAST_GOOD)]
    for b in backends:
        mates = tuple(n for n in names if n != b.name)
        role = "base" if b.name == BASE else "variant"
        b.engine.placement = Placement(b.name, role, device, cores=(1,), shares_with=mates)
    return registry(*backends)


def test_an_idle_shared_core_goes_to_the_cheapest_meeting_the_slo():
    reg = placed()
    assert route(BASE, PolicyName.SLO, SETTINGS, reg).candidates[0].name in (W8A8, W4A16)


def test_while_one_engine_on_the_core_is_busy_the_others_take_nothing_new():
    reg = placed()
    reg.backends[W8A8].in_flight = 3
    plan = route(BASE, PolicyName.SLO, SETTINGS, reg)
    assert plan.candidates[0].name == W8A8, plan.reason
    reg.backends[W8A8].in_flight = 0
    reg.backends[BASE].in_flight = 2  # the base busy: it keeps the core, the variants wait
    assert route(BASE, PolicyName.SLO, SETTINGS, reg).candidates[0].name == BASE


def test_the_busy_engine_at_its_limit_sheds_instead_of_starting_a_second_engine():
    reg = placed()
    busy = reg.backends[W8A8]
    busy.in_flight = 4
    busy.admission.limit = 4
    with pytest.raises(APIError) as exc:
        route(BASE, PolicyName.SLO, SETTINGS, reg)
    assert exc.value.status == 429


def test_engines_sharing_a_gpu_are_not_held_back():
    reg = placed("cuda")
    reg.backends[W8A8].in_flight = 3
    first = route(BASE, PolicyName.SLO, SETTINGS, reg).candidates[0].name
    assert first in (W8A8, W4A16)
    reg.backends[BASE].in_flight = 2
    assert route(BASE, PolicyName.SLO, SETTINGS, reg).candidates[0].name in (W8A8, W4A16)


def test_other_policies_ignore_the_sharing():
    reg = placed()
    reg.backends[BASE].in_flight = 2
    assert route(BASE, PolicyName.COST, SETTINGS, reg).candidates[0].name in (W8A8, W4A16)
