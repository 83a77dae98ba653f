"""The controller's heartbeat: when its scheduling loop last completed a cycle, in the
database, so that the readiness check of an API process that does not run the controller
(``api/routes/health.py``) can tell whether one runs and keeps up."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from allotment.controller.scheduling import SchedulingLoop
from allotment.db.engine import Database
from allotment.db.heartbeat import CONTROLLER, beat
from allotment.db.outage import classify

__all__ = ["BEAT_SECONDS", "keep_beating", "stale_after"]

log = logging.getLogger("allotment.controller")

#: How often the last cycle's time is written (when it changed).
BEAT_SECONDS = 5.0


def stale_after(interval: float) -> float:
    """Seconds without a completed cycle after which the controller counts as stuck or gone:
    three scheduling intervals, and never less than a minute (a cycle over a long queue, or
    a database that paused, must not make a working controller look dead)."""
    return max(60.0, 3.0 * interval)


async def keep_beating(db: Database, scheduling: SchedulingLoop) -> None:
    """Runs with the controller's loops; an outage is the scheduling loop's to log."""
    written: datetime | None = None
    while True:
        await asyncio.sleep(BEAT_SECONDS if written else 0.5)
        at = scheduling.cycled_at
        if at is None or at == written:
            continue
        try:
            await beat(db, CONTROLLER, at, stale_after(scheduling.interval))
        except Exception as e:
            if classify(e) is None:
                log.warning("the controller's heartbeat was not written: %s", e)
            continue
        written = at
