import pytest

from server.routing.breaker import Breaker
from server.routing.live_stats import LiveStats


def test_opens_after_consecutive_failures_and_closes_on_success():
    b = Breaker(failures=3, cooldown_s=10)
    b.failure(now=0)
    b.failure(now=0)
    assert b.allows(now=0)
    b.failure(now=0)
    assert not b.allows(now=5) and b.open
    assert b.allows(now=10)  # half-open after the cool-down
    b.failure(now=10)  # the trial request failed: open again
    assert not b.allows(now=15)
    b.success()
    assert b.allows(now=15) and not b.open


def test_success_resets_the_count():
    b = Breaker(failures=2, cooldown_s=10)
    b.failure(now=0)
    b.success()
    b.failure(now=0)
    assert b.allows(now=0)


def test_live_stats_follow_measurements():
    s = LiveStats(alpha=0.5)
    assert s.predict(prior_ttft_s=0.3, prior_tpot_s=0.02, now=0) == (0.3, 0.02)
    s.observe(0.1, 0.01, now=10)
    s.observe(0.3, 0.03, now=10)
    assert s.ttft_s == 0.2 and s.tpot_s == 0.02
    assert s.predict(prior_ttft_s=1, prior_tpot_s=1, now=10) == pytest.approx((0.2, 0.02))


def test_averages_fade_toward_the_card_when_nothing_is_served():
    # A variant predicted slow gets no traffic, hence no samples: without fading it would be
    # skipped (or its requests shed) for good.
    s = LiveStats(alpha=1.0, fade_half_life_s=2.0)
    s.observe(5.0, 0.5, now=0)
    ttft, tpot = s.predict(prior_ttft_s=0.1, prior_tpot_s=0.05, now=2)
    assert ttft == 0.1 + (5.0 - 0.1) / 2 and tpot == 0.05 + (0.5 - 0.05) / 2
    ttft, _ = s.predict(prior_ttft_s=0.1, prior_tpot_s=0.05, now=60)
    assert ttft < 0.11


def test_a_backlog_shows_at_once_through_the_oldest_waiting_request():
    s = LiveStats()
    s.observe(0.1, 0.01, now=0)
    first = s.start_waiting(now=0)
    s.start_waiting(now=1.0)
    assert s.predict(0.1, 0.01, now=0.05)[0] == 0.1  # young queue: the average rules
    assert s.predict(0.1, 0.01, now=2.5)[0] == 2.5  # the head has waited 2.5 s
    s.first_token(first)
    assert s.predict(0.1, 0.01, now=2.5)[0] == 1.5


def test_token_gaps_move_the_time_per_output_token_at_once():
    s = LiveStats(gap_alpha=0.5)
    s.observe(0.1, 0.02, now=0)
    s.observe_token_gap(0.5, now=1)
    s.observe_token_gap(0.5, now=1)
    assert s.predict(0.1, 0.02, now=1)[1] == pytest.approx(0.02 * 0.25 + 0.5 * 0.75)
