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


def test_live_stats_follow_measurements_and_queue():
    s = LiveStats(alpha=0.5)
    assert s.predict(0, prior_ttft_s=0.3, prior_tpot_s=0.02, slots=4) == (0.3, 0.02)
    s.observe(0.1, 0.01)
    s.observe(0.3, 0.03)
    assert s.ttft_s == 0.2 and s.tpot_s == 0.02
    ttft, _ = s.predict(in_flight=7, prior_ttft_s=1, prior_tpot_s=1, slots=4)
    assert ttft == 0.2 * (1 + 4 / 4)  # 8 requests on 4 slots: 4 wait
