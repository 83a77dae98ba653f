"""The controller's loops meet an unavailable database: each logs it once when it starts and
once when it ends, with no traceback, and carries on within seconds (``db/outage.py``).
Real PostgreSQL stopped under a real controller: tests/api/test_outage.py."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from typing import Any

import pytest
from sqlalchemy import exc as sa

from allotment.controller.reconciler import MAX_START_FAILURES
from allotment.controller.watch import Watch
from allotment.controller.workers import Workers
from allotment.controller.workqueue import WorkQueue
from allotment.db.heartbeat import CONTROLLER, STARTED, last_beat
from allotment.db.workloads import to_starting
from tests.controller.conftest import Fast

FULL = sa.OperationalError("COMMIT", {}, sqlite3.OperationalError("database or disk is full"))


class FullDiskTwice:
    """A reconciler whose database is full for its first two tries (a named fake)."""

    def __init__(self) -> None:
        self.tries = 0

    async def reconcile(self, workload: int) -> None:
        self.tries += 1
        if self.tries <= 2:
            raise FULL


def lines(caplog: pytest.LogCaptureFixture, what: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(what)]


async def test_a_reconciler_worker_waits_out_a_full_disk_and_logs_it_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue: WorkQueue[int] = WorkQueue()
    reconciler = FullDiskTwice()
    workers = Workers(queue, reconciler)  # type: ignore[arg-type]
    task = asyncio.create_task(workers.run())
    with caplog.at_level(logging.INFO, "allotment.controller"):
        queue.add(1)
        for _ in range(100):
            if reconciler.tries == 3:
                break
            await asyncio.sleep(0.05)
    task.cancel()
    await queue.close()
    assert reconciler.tries == 3
    assert queue.failures(1) == 0, "an outage is not the workload's failure"
    said = lines(caplog, "reconciler: ")
    assert len(said) == 2, said
    assert "the disk holding the database is full" in said[0]
    assert "the database is back after" in said[1] and "2 attempts failed" in said[1]
    assert not [r for r in caplog.records if r.exc_info]


async def test_the_watch_waits_out_an_outage_and_logs_it_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    watch = Watch(None, None, {}, lambda _w: None, 0.01)  # type: ignore[arg-type]
    polls = 0

    async def poll_once() -> None:
        nonlocal polls
        polls += 1
        if polls <= 3:
            raise FULL

    watch.poll_once = poll_once  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, "allotment.controller"):
        task = asyncio.create_task(watch.run())
        for _ in range(100):
            if polls >= 5:
                break
            await asyncio.sleep(0.02)
        task.cancel()
    said = lines(caplog, "watch over running workloads: ")
    assert len(said) == 2, said
    assert "3 polls failed" in said[1]
    assert not [r for r in caplog.records if r.exc_info]


async def test_the_controller_leaves_its_heartbeat_for_other_processes(fast: Fast) -> None:
    wid = await fast.submit("true")
    await fast.until(wid, "running", "stopped")
    for _ in range(50):
        seen = await last_beat(fast.controller.db, CONTROLLER)
        if seen is not None and seen[1] != STARTED:  # its first cycle's, not its start's
            break
        await asyncio.sleep(0.05)
    assert seen is not None
    at, stale_after = seen
    assert fast.controller.scheduling.cycled_at is not None
    assert at <= fast.controller.scheduling.cycled_at
    assert stale_after >= 60


async def test_an_outage_under_a_start_is_never_counted_against_the_workload(
    fast: Fast, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The database fails the write of STARTING more times than a start may fail: the
    # workload waits and starts once it answers, never FAILED "could not start".
    reconciler = fast.controller.reconciler
    fast.controller.workers.outage.max_backoff = 0.001
    write = reconciler._write
    refused = 0

    async def flaky(move: Any, *args: Any, **kw: Any) -> bool:
        nonlocal refused
        if move is to_starting and refused <= MAX_START_FAILURES:
            refused += 1
            raise FULL
        return await write(move, *args, **kw)

    monkeypatch.setattr(reconciler, "_write", flaky)
    wid = await fast.submit("true")
    w = await fast.until(wid, "stopped", "failed")
    assert refused == MAX_START_FAILURES + 1
    assert (w["status"], w["reason"]) == ("stopped", "completed (exit status 0)")
    assert reconciler.start_failures == {}
