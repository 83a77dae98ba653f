"""Kill the controller at every failpoint and start another on the same database, with the
same backend (the machine keeps its processes): the workload ends up running exactly once, or
stopped, never lost and never started twice. The fast twin of ``tests/integration/
test_crash.py``, which kills a real ``allot serve`` with SIGKILL at a few of these steps."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import uuid
from pathlib import Path

import pytest

from allotment.backends.fake import TERMINATED
from allotment.controller import failpoints
from allotment.controller.failpoints import STEPS
from allotment.controller.lock import NameInUse
from allotment.controller.service import Controller, ControllerSettings
from allotment.db.engine import Database
from allotment.domain.workloads import WorkloadState
from tests.controller.conftest import Fast, release_lock

#: Steps passed while a workload starts: after a restart it runs, launched once.
STARTING = ("admitted", "placing", "launched", "starting", "placed", "running")
#: Steps passed while a running workload is stopped on request: after a restart it is stopped.
STOPPING = ("stopping", "stopped", "ended")
#: Steps passed when a running workload ends on its own: its end is recorded once.
ENDING = ("ended",)


def test_every_step_is_crashed_at() -> None:
    assert set(STARTING) | set(STOPPING) | set(ENDING) == set(STEPS)


async def crash(fast: Fast, crashed: asyncio.Event) -> None:
    await asyncio.wait_for(crashed.wait(), 10)
    await fast.abandon()
    await fast.restart()


@pytest.mark.parametrize("step", STARTING)
async def test_a_crash_while_starting_runs_the_workload_once(fast: Fast, step: str) -> None:
    crashed = fast.crash_at(step)
    wid = await fast.submit()
    await crash(fast, crashed)
    w = await fast.until(wid, "running")
    assert fast.backend.launches[wid] == 1, "started twice"
    assert fast.backend.running() == [wid]
    assert w["node"] == "ws1" and w["started_at"] is not None
    # The placement on record finds the process that runs.
    fast.backend.finish(wid, 0)
    assert (await fast.until(wid, "stopped"))["exit_code"] == 0
    assert await fast.backend.present() == set()


@pytest.mark.parametrize("step", STOPPING)
async def test_a_crash_while_stopping_leaves_it_stopped(fast: Fast, step: str) -> None:
    wid = await fast.submit()
    await fast.until(wid, "running")
    crashed = fast.crash_at(step)
    await fast.cancel(wid)
    await crash(fast, crashed)
    w = await fast.until(wid, "stopped")
    assert w["exit_code"] == TERMINATED
    assert w["reason"] == "cancelled by admin-token/setup"
    assert fast.backend.launches[wid] == 1
    assert fast.backend.running() == [] and await fast.backend.present() == set()


@pytest.mark.parametrize("step", ENDING)
async def test_a_crash_as_it_ends_records_the_end_once(fast: Fast, step: str) -> None:
    wid = await fast.submit()
    await fast.until(wid, "running")
    crashed = fast.crash_at(step)
    fast.backend.finish(wid, 4)
    await crash(fast, crashed)
    w = await fast.until(wid, "failed")
    assert (w["exit_code"], w["reason"]) == (4, "exited with status 4")
    # Never released by the controller that died: the next one reaps it at recovery.
    assert fast.backend.reaped == [wid]
    assert await fast.backend.present() == set()


async def test_a_crash_with_a_queue_keeps_every_workload(fast: Fast) -> None:
    """Several workloads at different stages when it dies: each ends up where it should."""
    ended, running = await fast.submit(), await fast.submit()
    for wid in (ended, running):
        await fast.until(wid, "running")
    crashed = fast.crash_at("starting")
    starting = await fast.submit()
    await asyncio.wait_for(crashed.wait(), 10)
    fast.backend.finish(ended, 0)  # ends while no controller runs
    await fast.abandon()
    waiting = await fast.submit()  # submitted while no controller runs
    await fast.restart()
    assert (await fast.until(ended, "stopped"))["exit_code"] == 0
    for wid in (running, starting, waiting):
        await fast.until(wid, "running")
    assert fast.backend.running() == [running, starting, waiting]
    assert set(fast.backend.launches.values()) == {1}


async def test_a_second_controller_on_the_same_installation_does_not_start(fast: Fast) -> None:
    # `allot serve --workers N`: every worker process tries; only the lock's holder runs one.
    other = Controller(Database(fast.url), fast.clock, ControllerSettings(fast.data_dir))
    try:
        assert not await other.start()
    finally:
        await other.db.dispose()


async def test_two_installations_under_one_name_are_refused(fast: Fast, tmp_path: Path) -> None:
    """Each reaps what it finds under its name: the second to start is refused, saying whose
    the name is; under a name of its own it starts. The name is free again once its holder
    is gone (the kernel drops the lock with the process)."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    first = Controller(
        Database(fast.url), fast.clock, ControllerSettings(tmp_path / "a", installation=name), {}
    )
    second = Controller(
        Database(fast.url), fast.clock, ControllerSettings(tmp_path / "b", installation=name), {}
    )
    try:
        assert first.acquire()
        with pytest.raises(NameInUse, match=f"by the service whose data directory is {tmp_path}/a"):
            second.acquire()
    finally:
        release_lock(first)
    assert second.acquire()  # free again
    release_lock(second)
    for c in (first, second):
        await c.db.dispose()


async def test_a_cancel_between_the_first_placement_and_its_write_wins(fast: Fast) -> None:
    submitted: list[int] = []

    def cancel_now() -> None:  # as a cancel from another process lands right then
        with contextlib.closing(sqlite3.connect(fast.url.split("///", 1)[1])) as db, db:
            db.execute(
                "UPDATE workloads SET target = ? WHERE id = ?",
                (int(WorkloadState.STOPPED), submitted[0]),
            )

    failpoints.arm("placing", cancel_now)
    submitted.append(await fast.submit())
    w = await fast.until(submitted[0], "stopped")
    assert w["started_at"] is None
    assert fast.backend.launches[submitted[0]] == 0
    assert await fast.backend.present() == set(), "the placement handed out was released"
