"""The ledger's promises, for any sequence of submissions, starts, ends (of the workload's own
making or of ours), cancels, rate changes, clock advances and crashes of the meter (a pass
abandoned mid-transaction, a pass run twice, a new meter object), on a real SQLite database
and on PostgreSQL when ``ALLOTMENT_TEST_POSTGRES`` names a server:

- each workload's charges equal requested × wall time × the rate in force, span by span (a
  rate change applies from the next pass, within one interval), to the millionth;
- no two entries of a workload cover the same time, and every entry's amount is its span's;
- the days' totals equal the entries plus the open charges.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from allotment.clock import FakeClock
from allotment.config import parse_policy
from allotment.controller.meter import Meter
from allotment.db import workloads as transitions
from allotment.db.engine import Database
from allotment.db.ledger import totals
from allotment.db.policy_sync import apply_policy
from allotment.db.tables import (
    WORKLOADS,
    Account,
    LedgerEntry,
    OpenCharge,
    Pool,
    Profile,
    User,
)
from allotment.domain.ledger import charge, elapsed_ms, span_start, to_micros
from allotment.domain.workloads import WorkloadState as S

POSTGRES = os.environ.get("ALLOTMENT_TEST_POSTGRES")
ENTRY = 3600
#: (CPU, memory) prices an hour; a ``small`` job asks for one CPU and 1 GiB.
RATES = [(2.0, 1.0), (8.0, 0.0), (0.5, 0.25), (3.3, 0.0)]
POLICY = """
accounts:
  lab: {{members: [alice]}}
pools:
  box:
    nodes: [{{name: n1, cpus: 64, memory: 256G}}]
    rates: {{cpu: {cpu}, memory: {memory}}}
profiles:
  small: {{pool: box, size: {{cpus: 1, memory: 1G}}}}
accounting: {{interval: 1m, entry: 1h, time_zone: Europe/Berlin}}
"""
#: The night Berlin's clocks go forward (01:00 UTC on 29 March 2026).
T0 = datetime(2026, 3, 28, 21, 0, tzinfo=UTC)


def _rate(i: int) -> int:
    cpu, memory = RATES[i]
    return to_micros(cpu + memory)


class Abandoned(Exception):
    """The meter's process died before its pass committed."""


class _Abandoning:
    """The database as a meter sees it when it is killed after its pass's work, before the
    commit: the work is done in the transaction, and then it is gone."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def run_read(self, fn: Callable[[Any], Any]) -> Any:
        return await self.db.run_read(fn)

    async def run_write(self, fn: Callable[[Any], Any]) -> Any:
        def work(session: Any) -> Any:
            fn(session)
            raise Abandoned

        return await self.db.run_write(work)


@dataclass
class Model:
    start: datetime | None = None
    end: datetime | None = None
    ours: bool = False
    opened: bool = False
    closed: bool = False
    #: (from, rate) in force, as the meter priced it.
    rates: list[tuple[datetime, int]] = field(default_factory=list)

    def expected(self, upto: datetime) -> int:
        """What it should have cost, charged through ``upto``."""
        if not self.opened or self.start is None:
            return 0
        stop = min(upto, self.end) if self.end is not None else upto
        if self.closed and self.ours:
            return 0
        cuts = {t for t, _ in self.rates[1:] if self.start < t < stop}
        b = span_start(self.start, ENTRY) + timedelta(seconds=ENTRY)
        while b < stop:
            cuts.add(b)
            b += timedelta(seconds=ENTRY)
        points = [self.start, *sorted(cuts), stop]
        total = 0
        for a, z in zip(points, points[1:], strict=False):
            rate = [r for t, r in self.rates if t <= a][-1]
            total += charge(rate, elapsed_ms(a, z))
        return total


class World:
    """One database for all examples: its clock only moves forward, its workloads are new
    in each example (the totals' invariant holds over everything)."""

    def __init__(self, url: str, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.db = Database(url)
        self.clock = FakeClock(T0)
        self.rate = 0
        self.run(self.db.upgrade())
        self.apply(0)
        self.ids = self.run(self._ids())
        self.run(Meter(self.db, self.clock, {}).pass_once())

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def apply(self, i: int) -> None:
        cpu, memory = RATES[i]
        policy = parse_policy(POLICY.format(cpu=cpu, memory=memory), environ={})

        async def go() -> None:
            async with self.db.write() as s:
                await apply_policy(s, policy, actor="test", now=self.clock.now())

        self.run(go())
        self.rate = i

    async def _ids(self) -> dict[str, int]:
        async with self.db.read() as s:
            return {
                "user_id": (await s.execute(select(User.id))).scalar_one(),
                "account_id": (
                    await s.execute(select(Account.id).where(Account.path == "lab"))
                ).scalar_one(),
                "pool_id": (await s.execute(select(Pool.id))).scalar_one(),
                "profile_id": (await s.execute(select(Profile.id))).scalar_one(),
            }


class Ledger(RuleBasedStateMachine):
    world: World

    pending = Bundle("pending")
    running = Bundle("running")

    def __init__(self) -> None:
        super().__init__()
        w = self.world
        # Each example begins a day later, so its clock never runs back.
        w.clock.advance(86_400)
        self.meter = Meter(w.db, w.clock, {})
        w.run(self.meter.pass_once())
        self.models: dict[int, Model] = {}
        self.last_pass = w.clock.now()

    def _write(self, fn: Callable[[Any], Any]) -> Any:
        return self.world.run(self.world.db.run_write(lambda s: fn(s.connection())))

    @rule(target=pending)
    def submit(self) -> int:
        now = self.world.clock.now()
        values = {
            **self.world.ids,
            "kind": "job",
            "millicpus": 1000,
            "memory": 2**30,
            "gpus": {},
            "target": int(S.RUNNING),
            "status": int(S.PENDING),
            "reason": "",
            "created_at": now,
            "updated_at": now,
        }
        wid: int = self._write(
            lambda c: c.execute(insert(WORKLOADS).values(**values)).inserted_primary_key[0]
        )
        self.models[wid] = Model()
        return wid

    @initialize(target=running)
    def already_running(self) -> MultipleResults[int]:
        """Two workloads run from the start of each example: there is something to charge."""
        return multiple(self.start(self.submit()), self.start(self.submit()))

    @rule(target=running, wid=consumes(pending))
    def start(self, wid: int) -> int:
        now = self.world.clock.now()
        self._write(lambda c: transitions.to_admitted(c, wid, "n1", "", now))
        self._write(lambda c: transitions.to_starting(c, wid, {"attempt": 1}, "", now))
        assert self._write(lambda c: transitions.to_running(c, wid, "running", now))
        self.models[wid].start = now
        return wid

    @rule(wid=consumes(pending))
    def cancel(self, wid: int) -> None:
        now = self.world.clock.now()
        self._write(lambda c: transitions.to_ended(c, wid, S.STOPPED, [S.PENDING], now))

    @rule(wid=consumes(running), how=st.sampled_from(["stopped", "own failure", "ours"]))
    def end(self, wid: int, how: str) -> None:
        now = self.world.clock.now()
        status, reason = {
            "stopped": (S.STOPPED, "completed (exit status 0)"),
            "own failure": (S.FAILED, "exited with status 1"),
            "ours": (S.FAILED, "vanished without an exit status"),
        }[how]
        assert self._write(
            lambda c: transitions.to_ended(c, wid, status, [S.RUNNING], now, reason=reason)
        )
        m = self.models[wid]
        m.end, m.ours = now, how == "ours"

    @rule(seconds=st.one_of(st.integers(0, 120), st.integers(1, 3 * 3600)))
    def advance_and_pass(self, seconds: int) -> None:
        """The clock moves on (a pass may come late, hours late) and the meter passes."""
        self.world.clock.advance(seconds)
        self.meter_pass()

    def meter_pass(self) -> None:
        self.world.run(self.meter.pass_once())
        now = self.world.clock.now()
        rate = _rate(self.world.rate)
        for m in self.models.values():
            if m.start is None:
                continue
            if not m.opened:
                m.opened, m.rates = True, [(m.start, rate)]
            if m.closed:
                continue
            if m.end is not None and m.end <= now:
                m.closed = True
            elif m.rates[-1][1] != rate:
                m.rates.append((now, rate))
        self.last_pass = now

    @rule()
    def pass_abandoned(self) -> None:
        crashing = Meter(_Abandoning(self.world.db), self.world.clock, {})  # type: ignore[arg-type]
        with pytest.raises(Abandoned):
            self.world.run(crashing.pass_once())

    @rule()
    def meter_restarted(self) -> None:
        self.meter = Meter(self.world.db, self.world.clock, {})

    @rule(i=st.integers(0, len(RATES) - 1))
    def rates_changed(self, i: int) -> None:
        self.world.apply(i)

    @invariant()
    def days_equal_entries_plus_open_charges(self) -> None:
        days, entries, open_ = self.world.run(self.world.db.run_read(totals))
        assert days == entries + open_

    @invariant()
    def each_workload_costs_what_it_ran(self) -> None:
        ids = list(self.models)
        if not ids:
            return

        def read(session: Any) -> tuple[list[Any], dict[int, int]]:
            entries = session.execute(
                select(LedgerEntry)
                .where(LedgerEntry.workload_id.in_(ids))
                .order_by(LedgerEntry.workload_id, LedgerEntry.start)
            ).scalars()
            charges = session.execute(
                select(OpenCharge.workload_id, OpenCharge.amount).where(
                    OpenCharge.workload_id.in_(ids), ~OpenCharge.closed
                )
            )
            return list(entries), {w: a for w, a in charges}

        entries, open_ = self.world.run(self.world.db.run_read(read))
        cost = dict(open_)
        last_end: dict[int, datetime] = {}
        for e in entries:
            cost[e.workload_id] = cost.get(e.workload_id, 0) + e.amount
            if e.kind != "charge":
                continue
            assert e.amount == charge(e.rate, elapsed_ms(e.start, e.end))
            assert e.start < e.end
            if e.workload_id in last_end:
                assert e.start >= last_end[e.workload_id], "two entries cover the same time"
            last_end[e.workload_id] = e.end
        for wid, m in self.models.items():
            assert cost.get(wid, 0) == m.expected(self.last_pass), (wid, m)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    loop = asyncio.new_event_loop()
    cleanup: list[Callable[[], Any]] = []
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.sqlite'}"
    else:
        if not POSTGRES:
            pytest.skip("set ALLOTMENT_TEST_POSTGRES (scripts/test does)")
        name = "t_" + uuid.uuid4().hex[:16]
        admin = create_async_engine(POSTGRES, isolation_level="AUTOCOMMIT")

        async def sql(statement: str) -> None:
            async with admin.connect() as conn:
                await conn.execute(text(statement))

        loop.run_until_complete(sql(f'CREATE DATABASE "{name}"'))
        url = make_url(POSTGRES).set(database=name).render_as_string(hide_password=False)
        cleanup.append(lambda: loop.run_until_complete(sql(f'DROP DATABASE "{name}" WITH (FORCE)')))
        cleanup.append(lambda: loop.run_until_complete(admin.dispose()))
    w = World(url, loop)
    yield w
    loop.run_until_complete(w.db.dispose())
    for undo in cleanup:
        undo()
    loop.close()


@pytest.mark.timeout(600)
def test_the_ledger_charges_exactly_once_whatever_happens(world: World) -> None:
    Ledger.world = world
    run_state_machine_as_test(
        Ledger,
        settings=settings(
            max_examples=int(os.environ.get("LEDGER_EXAMPLES", "15")),
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        ),
    )
