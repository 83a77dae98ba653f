"""A restore reconciles the backup with what happened since, fast (``FakeBackend``, SQLite):
with the database it replaces kept aside, every workload takes its true outcome or keeps
running; with that database lost, what a backend still holds is never run again; either way
no workload id is given a second time. The real thing, with real jobs, is in
``tests/integration/test_backup.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from allotment.controller.restore import RestoreRefused, restore
from allotment.db.backup import backup_sqlite
from allotment.db.engine import Database
from allotment.db.tables import WORKLOADS
from tests.controller.conftest import Fast, start_controller


async def _rows(url: str) -> dict[int, Any]:
    db = Database(url)
    try:
        rows = await db.run_read(lambda s: s.execute(select(WORKLOADS)).all())
        return {r.id: r for r in rows}
    finally:
        await db.dispose()


async def _backed_up(fast: Fast, tmp_path: Path) -> tuple[list[int], Path]:
    """Six jobs: four run (a node of four CPUs), two wait; then a backup."""
    wids = [await fast.submit() for _ in range(6)]
    for wid in wids[:4]:
        await fast.until(wid, "running")
    copy = tmp_path / "copy.sqlite"
    backup_sqlite(tmp_path / "allotment.sqlite", copy)
    return wids, copy


async def test_with_the_replaced_database_kept_every_outcome_is_true(
    fast: Fast, tmp_path: Path
) -> None:
    (w1, w2, w3, w4, w5, w6), copy = await _backed_up(fast, tmp_path)
    with pytest.raises(RestoreRefused, match="stop it"):  # its controller runs
        await restore(copy, fast.url, fast.data_dir, fast.clock, backends={"local": fast.backend})
    # After the backup: w1 completes, w2 fails, so w5 and w6 start; w5 completes; w7 comes.
    fast.backend.finish(w1)
    fast.backend.finish(w2, exit_code=3)
    await fast.until(w5, "running")
    await fast.until(w6, "running")
    fast.backend.finish(w5)
    await fast.until(w5, "stopped")
    w7 = await fast.submit()
    await fast.until(w7, "running")
    await fast.abandon()
    launches = dict(fast.backend.launches)

    done = await restore(
        copy, fast.url, fast.data_dir, fast.clock, backends={"local": fast.backend}
    )
    assert done.aside is not None and Path(done.aside).exists()
    rows = await _rows(fast.url)
    assert w7 not in rows  # submitted after the backup
    assert rows[w1].reason == "ended after the backup was taken; completed (exit status 0)"
    assert (rows[w2].exit_code, rows[w2].reason) == (
        3,
        "ended after the backup was taken; exited with status 3",
    )
    assert rows[w5].reason == "ran after the backup was taken; completed (exit status 0)"
    assert rows[w6].placement is not None  # still running: adopted at start, not run again
    assert set(done.reconciled.updated) == {w1, w2, w5, w6} and not done.reconciled.unknown
    assert done.reconciled.newest_id == w7

    fast.controller = await start_controller(fast.url, fast.data_dir, fast.clock, fast.backend)
    fast.controllers.append(fast.controller)
    w8 = await fast.controller.db.run_write(lambda s: _insert_like(s, w6))
    assert w8 > w7  # never w7's id again
    fast.backend.finish(w6)
    fast.backend.finish(w3)
    fast.controller.wake(w6)
    fast.controller.wake(w3)
    await _until(fast, w6, 5)
    assert fast.backend.launches[w6] == launches[w6] == 1
    assert fast.backend.reaped == [w7]  # what nobody accounts for any more


async def test_with_the_replaced_database_lost_nothing_runs_twice(
    fast: Fast, tmp_path: Path
) -> None:
    (w1, _, w3, _, w5, _), copy = await _backed_up(fast, tmp_path)
    fast.backend.finish(w1)
    await fast.until(w1, "stopped")  # ended and released: nothing of it left
    await fast.until(w5, "running")
    await fast.abandon()
    for f in tmp_path.glob("allotment.sqlite*"):
        f.unlink()  # the disk holding the database was lost

    done = await restore(
        copy, fast.url, fast.data_dir, fast.clock, backends={"local": fast.backend}
    )
    assert done.aside is None
    rows = await _rows(fast.url)
    assert rows[w5].status == 6 and rows[w5].reason.startswith("started after the backup")
    assert rows[w1].status == 6 and rows[w1].reason.startswith("ended after the backup")
    assert rows[w3].status == 3  # running, and still there: the controller finds it
    assert set(done.reconciled.unknown) == {w1, w5}

    fast.controller = await start_controller(fast.url, fast.data_dir, fast.clock, fast.backend)
    fast.controllers.append(fast.controller)
    assert fast.backend.launches[w5] == 1 and w5 in fast.backend.reaped
    assert w3 in fast.backend.running()


def _insert_like(session: Any, wid: int) -> int:
    row = dict(session.execute(select(WORKLOADS).where(WORKLOADS.c.id == wid)).one()._mapping)
    row.pop("id")
    row.update(status=0, target=3, placement=None, idempotency_key=None)
    return int(
        session.execute(WORKLOADS.insert().values(**row).returning(WORKLOADS.c.id)).scalar_one()
    )


async def _until(fast: Fast, wid: int, status: int) -> None:
    import asyncio

    for _ in range(5000):
        rows = await fast.controller.db.run_read(
            lambda s: s.execute(
                select(WORKLOADS.c.status).where(WORKLOADS.c.id == wid)
            ).scalar_one()
        )
        if rows == status:
            return
        await asyncio.sleep(0.002)
    raise AssertionError(f"workload {wid} never reached {status}")


async def test_workloads_submitted_after_the_backup_are_listed(fast: Fast, tmp_path: Path) -> None:
    """Not in the backup: one still running is stopped by the controller's recovery, one that
    waited never runs; the restore says which, so that their owners can be told."""
    (w1, w2, w3, _, w5, w6), copy = await _backed_up(fast, tmp_path)
    for wid in (w1, w2):
        fast.backend.finish(wid)
    await fast.until(w5, "running")
    await fast.until(w6, "running")
    fast.backend.finish(w3)
    await fast.until(w3, "stopped")
    running = await fast.submit()
    await fast.until(running, "running")
    waiting = await fast.submit()  # the node is full: it waits
    await fast.abandon()

    done = await restore(
        copy, fast.url, fast.data_dir, fast.clock, backends={"local": fast.backend}
    )
    assert done.reconciled.gone == {
        running: "submitted after the backup was taken; running: it will be stopped",
        waiting: "submitted after the backup was taken; pending: it will not run (its owner "
        "may submit it again)",
    }
