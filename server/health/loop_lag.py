"""Warns when the gateway's event loop was stalled: a blocking call on its thread, or no CPU
for the gateway (engines busy on the same cores).

Every request waits while the loop is stalled, so a stall shows up as latency that no engine
explains; this log line names when it happened and for how long.
"""

from __future__ import annotations

import asyncio
import logging
import time

log = logging.getLogger("leanserve.loop")


async def watch(threshold_s: float = 0.5, period_s: float = 0.1) -> None:
    """Run forever: wake every `period_s` and warn when a wake-up came `threshold_s` late."""
    while True:
        before = time.monotonic()
        await asyncio.sleep(period_s)
        late = time.monotonic() - before - period_s
        if late > threshold_s:
            log.warning(
                "event loop stalled for %.2f s (a blocking call, or no CPU for the gateway): "
                "every request waited that long",
                late,
            )
