"""The slo policy's learned concurrency limit (AIMD on time to first token)."""

from __future__ import annotations

from server.routing.admission import ConcurrencyLimit

SLO = 1.0


def fill(limit: ConcurrencyLimit) -> int:
    """The variant at its limit: as many in flight as it allows."""
    return int(limit.limit)


def test_grows_only_while_at_its_limit_and_fast():
    lim = ConcurrencyLimit(limit=4)
    lim.observe(0.1, sent_at=0, in_flight=1, slo_ttft_s=SLO, now=1)  # idle: no evidence
    assert lim.limit == 4
    for t in range(4):
        lim.observe(0.1, sent_at=t, in_flight=fill(lim), slo_ttft_s=SLO, now=t + 1)
    assert lim.limit == 8  # slow start: +1 per good answer at the limit, doubling per round


def test_a_slow_answer_cuts_once_per_round_trip():
    lim = ConcurrencyLimit(limit=20)
    lim.observe(0.9, sent_at=10, in_flight=20, slo_ttft_s=SLO, now=11)  # above 0.8 x SLO
    assert lim.limit == 14
    # Requests sent before that cut were admitted under the old limit: they do not cut again.
    lim.observe(2.0, sent_at=10.5, in_flight=14, slo_ttft_s=SLO, now=12)
    assert lim.limit == 14
    lim.observe(2.0, sent_at=11.5, in_flight=14, slo_ttft_s=SLO, now=13)
    assert round(lim.limit, 6) == 9.8


def test_after_a_cut_it_grows_additively():
    lim = ConcurrencyLimit(limit=10)
    lim.observe(5.0, sent_at=0, in_flight=10, slo_ttft_s=SLO, now=1)
    assert lim.limit == 7 and not lim.slow_start
    for t in range(7):
        lim.observe(0.1, sent_at=2 + t, in_flight=fill(lim), slo_ttft_s=SLO, now=3 + t)
    assert 7.9 < lim.limit < 8.0  # about +1 per limit's worth of good answers


def test_stays_within_floor_and_ceiling():
    lim = ConcurrencyLimit(limit=2, ceiling=3)
    for t in range(10):
        lim.observe(9.0, sent_at=2 * t, in_flight=1, slo_ttft_s=SLO, now=2 * t + 1)
    assert lim.limit == 1 and lim.allows(0) and not lim.allows(1)
    lim = ConcurrencyLimit(limit=2, ceiling=3)
    for t in range(10):
        lim.observe(0.1, sent_at=t, in_flight=fill(lim), slo_ttft_s=SLO, now=t + 1)
    assert lim.limit == 3


def test_a_stream_waiting_past_the_target_cuts_before_it_is_answered():
    lim = ConcurrencyLimit(limit=10)
    lim.still_waiting(0.5, sent_at=3, slo_ttft_s=SLO, now=3.5)  # within target: nothing yet
    assert lim.limit == 10
    lim.still_waiting(0.9, sent_at=3, slo_ttft_s=SLO, now=3.9)
    assert lim.limit == 7
    lim.still_waiting(1.5, sent_at=3, slo_ttft_s=SLO, now=4.5)  # the same stream: no second cut
    assert lim.limit == 7
