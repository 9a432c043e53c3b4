"""The event-loop watchdog names a stall (a blocking call in the gateway) and stays quiet
otherwise."""

from __future__ import annotations

import asyncio
import logging
import time

from server.health import loop_lag


async def test_a_blocked_loop_is_reported(caplog):
    caplog.set_level(logging.WARNING, logger="leanserve.loop")
    watcher = asyncio.create_task(loop_lag.watch(threshold_s=0.2, period_s=0.02))
    await asyncio.sleep(0.1)
    assert not caplog.records, "an idle loop is not blocked"
    time.sleep(0.4)  # a blocking call on the loop's thread
    await asyncio.sleep(0.1)
    watcher.cancel()
    assert len(caplog.records) == 1
    seconds = float(caplog.records[0].getMessage().split("stalled for ")[1].split(" s")[0])
    assert 0.3 <= seconds <= 1.0
