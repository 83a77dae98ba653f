"""A controller started again says so before it recovers: readiness must not take its
predecessor's last beat (still fresh for a minute) for its own (db/heartbeat.py)."""

from __future__ import annotations

from allotment.db.heartbeat import CONTROLLER, STARTED, beat, last_beat
from tests.controller.conftest import Fast


async def test_a_restarted_controller_replaces_its_predecessors_beat(fast: Fast) -> None:
    db = fast.app.state.allotment.db
    await fast.abandon()
    await beat(db, CONTROLLER, fast.clock.now(), 60.0)  # the killed one's last, still fresh
    await fast.restart()
    # Read before the new one's first beat (its heartbeat task waits half a second).
    seen = await last_beat(db, CONTROLLER)
    assert seen is not None
    assert seen[1] == STARTED
