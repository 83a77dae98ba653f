"""The meter killed with SIGKILL mid-pass, again and again, and its PostgreSQL stopped and
started under it: nothing lost, nothing doubled.

A real process runs the meter's passes (``Meter.pass_once``, its clock a minute further each
pass, from where the last committed pass left it) over 40 running workloads, on SQLite and on a
private PostgreSQL; the test kills it at random moments (each pass is a few milliseconds:
most kills land inside one). Afterwards one more pass in the test: every workload has cost
exactly what its run did, span by span; no two entries of a workload overlap; the days'
totals equal the entries plus the open charges.

What this does not run is the whole service (``allot serve``): the meter's pass is the only
writer of the ledger, and the controller's own crash tests (``tests/controller/test_crash.py``,
``tests/integration/test_service_processes.py``) cover the process around it.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select

from allotment.clock import FakeClock
from allotment.controller.meter import Meter
from allotment.db.engine import Database
from allotment.db.ledger import METER, totals
from allotment.db.tables import WORKLOADS, Heartbeat, LedgerEntry, OpenCharge
from allotment.domain.workloads import WorkloadState as S
from tests.controller.test_ledger_properties import T0, Model, World, _rate
from tests.support.postgres import Postgres, private_postgres
from tests.support.process import ROOT

N = 40

CHILD = """
import asyncio, sys
from datetime import datetime, timedelta
from sqlalchemy import select
from allotment.clock import FakeClock
from allotment.controller.meter import Meter
from allotment.db.engine import Database
from allotment.db.ledger import METER
from allotment.db.outage import classify
from allotment.db.tables import Heartbeat

async def main(url):
    db = Database(url)
    async with db.read() as s:
        at = (await s.execute(select(Heartbeat.at).where(Heartbeat.name == METER))).scalar_one()
    clock = FakeClock(at + timedelta(seconds=60))
    meter = Meter(db, clock, {})
    print("ready", flush=True)
    while True:
        try:
            await meter.pass_once()
            clock.advance(60)
        except Exception as e:
            if classify(e) is None:
                raise
            await asyncio.sleep(0.05)  # the database is away: try the same pass again

asyncio.run(main(sys.argv[1]))
"""


def _child(url: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, url],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _prepare(url: str) -> tuple[World, list[datetime]]:
    world = World(url, asyncio.new_event_loop())
    starts = [T0 + timedelta(seconds=37 * i) for i in range(N)]
    now = T0 + timedelta(hours=1)
    rows = [
        {
            **world.ids,
            "kind": "job",
            "millicpus": 1000,
            "memory": 2**30,
            "gpus": {},
            "target": int(S.RUNNING),
            "status": int(S.RUNNING),
            "reason": "",
            "created_at": start,
            "updated_at": start,
            "started_at": start,
        }
        for start in starts
    ]

    async def fill() -> None:
        async with world.db.write() as s:
            await s.execute(insert(WORKLOADS), rows)

    world.run(fill())
    world.clock = FakeClock(now)
    world.run(Meter(world.db, world.clock, {}).pass_once())
    return world, starts


def _check(world: World, starts: list[datetime]) -> int:
    """One last pass, then the ledger's promises; how far the meter got, in passes."""

    async def last() -> datetime:
        async with world.db.read() as s:
            at: datetime = (
                await s.execute(select(Heartbeat.at).where(Heartbeat.name == METER))
            ).scalar_one()
        return at

    reached = world.run(last())
    world.clock = FakeClock(reached + timedelta(seconds=60))
    world.run(Meter(world.db, world.clock, {}).pass_once())
    end = world.clock.now()

    def read(session: Any) -> tuple[list[Any], dict[int, int], tuple[int, int, int]]:
        entries = list(
            session.execute(
                select(LedgerEntry).order_by(LedgerEntry.workload_id, LedgerEntry.start)
            ).scalars()
        )
        charges = dict(
            session.execute(
                select(OpenCharge.workload_id, OpenCharge.amount).where(~OpenCharge.closed)
            ).all()
        )
        return entries, charges, totals(session)

    entries, charges, (days, in_entries, open_) = world.run(world.db.run_read(read))
    assert days == in_entries + open_
    cost: dict[int, int] = dict(charges)
    last_end: dict[int, datetime] = {}
    for e in entries:
        cost[e.workload_id] = cost.get(e.workload_id, 0) + e.amount
        if e.workload_id in last_end:
            assert e.start >= last_end[e.workload_id], "two entries cover the same time"
        last_end[e.workload_id] = e.end
    for wid, start in enumerate(starts, 1):
        model = Model(start=start, opened=True, rates=[(start, _rate(0))])
        assert cost[wid] == model.expected(end), wid
    return int((end - T0).total_seconds() // 60)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Any]]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'meter.sqlite'}", None
        return
    if os.geteuid() != 0:
        pytest.skip("a private PostgreSQL runs as the postgres account: needs root")
    with private_postgres("allotment-meter-crash.") as server:
        yield server.url, server


@pytest.mark.timeout(300)
def test_the_meter_killed_mid_pass_loses_nothing_and_doubles_nothing(
    database: tuple[str, Postgres | None],
) -> None:
    url, _ = database
    world, starts = _prepare(url)
    rng = random.Random(14)
    try:
        for _ in range(12):
            proc = _child(url)
            time.sleep(rng.uniform(0.2, 1.0))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        passes = _check(world, starts)
        assert passes > 60, "the meter hardly ran: the kills tested nothing"
    finally:
        world.run(world.db.dispose())


@pytest.mark.timeout(300)
def test_postgresql_restarted_under_the_meter_loses_nothing(
    database: tuple[str, Postgres | None],
) -> None:
    url, server = database
    if server is None:
        pytest.skip("SQLite has no server to restart")
    world, starts = _prepare(url)
    proc = _child(url)
    try:
        for _ in range(3):
            time.sleep(1.0)
            server.stop()
            time.sleep(0.5)
            server.start()
        time.sleep(1.5)
        assert proc.poll() is None, "the meter died with its database"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        world.run(world.db.dispose())  # connections of the server before its restarts
        world.db = Database(url)
        passes = _check(world, starts)
        assert passes > 60
    finally:
        if proc.poll() is None:
            proc.kill()
        world.run(world.db.dispose())
