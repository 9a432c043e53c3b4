"""The quality routing uses: the card's chat agreement when it has one (else held-out text),
and, once a variant has quality.live_min_samples scored live requests, the lower end of its
live interval instead; the route reason says which."""

from __future__ import annotations

from server.routing.policies import PolicyName
from server.routing.service import quality_of, route, routed_quality
from server.settings import load_settings
from tests.server.quality.helpers import BASE, W8A8, backend, registry

HELD_OUT_ONLY = {"quality": {"top1_agreement": 0.95}, "size": {"size_ratio": 0.6}}
WITH_CHAT = {
    "quality": {"top1_agreement": 0.95, "chat": {"top1_agreement": 0.91}},
    "size": {"size_ratio": 0.6},
}


def settings(**quality):
    return load_settings(variants=[], routing={"quality_floor": 0.9}, quality=quality)


def live_at(b, n: int, agree_per_10: int = 8) -> None:
    """`n` scored requests of 10 positions each, alternating 7 and 9 agreeing around 8."""
    for i in range(n):
        b.live_quality.add(10, agree_per_10 + (1 if i % 2 else -1), 0.0)


def test_the_card_headline_is_chat_agreement_when_present():
    assert quality_of(backend(W8A8, WITH_CHAT)) == 0.91
    assert quality_of(backend(W8A8, HELD_OUT_ONLY)) == 0.95
    assert quality_of(backend(W8A8, {"quality": {"chat": {"prompts": 3}}})) == 0.0
    assert quality_of(backend(BASE)) == 1.0


def test_live_replaces_the_card_at_the_minimum_sample():
    s = settings(live_min_samples=50)
    b = backend(W8A8, WITH_CHAT)
    live_at(b, 49)
    assert routed_quality(b, s) == (0.91, "card")
    live_at(b, 1)
    value, source = routed_quality(b, s)
    low, high = b.live_quality.ci95()
    assert value == low < 0.8 < high, "the lower end of the interval, not the mean"
    assert source == "live lower 95 % bound, n=50"
    assert routed_quality(b, settings(live_min_samples=50, use_live=False)) == (0.91, "card")
    assert routed_quality(backend(BASE), s) == (1.0, "base")


def test_the_cost_policy_follows_live_quality_and_says_so():
    s = settings(live_min_samples=50)
    w8a8 = backend(W8A8, WITH_CHAT)
    reg = registry(backend(BASE), w8a8)
    plan = route(BASE, PolicyName.COST, s, reg)
    assert plan.candidates[0].name == W8A8, "the card's 0.91 is above the 0.9 floor"
    assert plan.reason.startswith("cost: cheapest") and "w8a8 0.910 (card)" in plan.reason
    live_at(w8a8, 50)  # live: about 0.8, below the floor
    plan = route(BASE, PolicyName.COST, s, reg)
    assert plan.candidates[0].name == BASE
    assert "(live lower 95 % bound, n=50)" in plan.reason, plan.reason
    plan = route(BASE, PolicyName.COST, settings(live_min_samples=50, use_live=False), reg)
    assert plan.candidates[0].name == W8A8, "use_live off: the card's figure again"


def test_reasons_without_variants_or_without_quality_are_unchanged():
    s = settings()
    only_base = route(BASE, PolicyName.QUALITY, s, registry(backend(BASE)))
    assert only_base.reason == "quality: best quality 1.000"
    latency = route(BASE, PolicyName.LATENCY, s, registry(backend(BASE), backend(W8A8, WITH_CHAT)))
    assert "quality:" not in latency.reason
