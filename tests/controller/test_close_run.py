"""``db.ledger.close_run``: a run that ended while its workload lives on (Slurm requeued it
after a node failure) is charged through its end by the meter's rules, and the next run is
charged from its own start; the time between the two is charged to nobody. On SQLite and on
PostgreSQL when ``ALLOTMENT_TEST_POSTGRES`` names a server:

- the entries add up to exactly the two runs' charges, span by span, to the millionth;
- no two entries of the workload overlap, none covers the gap;
- the days' totals equal the entries plus the open charges, after every step.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from allotment.clock import FakeClock
from allotment.config import parse_policy
from allotment.controller.meter import Meter
from allotment.db import workloads as transitions
from allotment.db.engine import Database
from allotment.db.ledger import ExternalCharge, Price, charge_externals, close_run, totals
from allotment.db.policy_sync import apply_policy
from allotment.db.tables import (
    WORKLOADS,
    Account,
    LedgerEntry,
    OpenCharge,
    Pool,
    Profile,
    UsageDay,
    User,
)
from allotment.domain.ledger import (
    charge,
    elapsed_ms,
    span_start,
    split_at_midnight,
    to_micros,
)
from allotment.domain.resources import Resources
from allotment.domain.workloads import WorkloadState as S

POSTGRES = os.environ.get("ALLOTMENT_TEST_POSTGRES")
ENTRY = 3600
TZ = "Europe/Berlin"
#: A ``small`` job (one CPU, 1 GiB) costs 2 + 1 an hour.
RATE = to_micros(3.0)
POLICY = """
accounts:
  lab: {members: [alice]}
pools:
  box:
    nodes: [{name: n1, cpus: 64, memory: 256G}]
    rates: {cpu: 2, memory: 1}
profiles:
  small: {pool: box, size: {cpus: 1, memory: 1G}}
accounting: {interval: 1m, entry: 1h, time_zone: Europe/Berlin}
"""
#: 21:00 UTC: Berlin's midnight comes at 23:00 UTC, two hours in.
T0 = datetime(2026, 3, 10, 21, 0, tzinfo=UTC)


def cost(start: datetime, end: datetime, rate: int = RATE) -> int:
    """What [start, end) costs by the ledger's rules: one charge per span of the clock."""
    total, a = 0, start
    while a < end:
        b = min(span_start(a, ENTRY) + timedelta(seconds=ENTRY), end)
        total += charge(rate, elapsed_ms(a, b))
        a = b
    return total


class World:
    """A migrated database with the policy applied, its clock, and a meter."""

    def __init__(self, url: str, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.db = Database(url)
        self.clock = FakeClock(T0)
        self.run(self.db.upgrade())
        policy = parse_policy(POLICY, environ={})

        async def go() -> None:
            async with self.db.write() as s:
                await apply_policy(s, policy, actor="test", now=self.clock.now())

        self.run(go())
        self.ids = self.run(self._ids())
        self.meter = Meter(self.db, self.clock, {})
        self.run(self.meter.pass_once())

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

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

    def write(self, fn: Callable[[Any], Any]) -> Any:
        return self.run(self.db.run_write(fn))

    def at(self, t: datetime) -> None:
        """The clock moves to ``t`` (never back)."""
        assert t >= self.clock.now()
        self.clock.advance((t - self.clock.now()).total_seconds())

    def meter_pass(self) -> None:
        self.run(self.meter.pass_once())

    def submit(self) -> int:
        now = self.clock.now()
        values = {
            **self.ids,
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
        return int(
            self.write(
                lambda s: s.execute(insert(WORKLOADS).values(**values)).inserted_primary_key[0]
            )
        )

    def start(self, wid: int, again: bool = False) -> None:
        """Admitted, started and running; ``again``: a requeued one, waiting in STARTING."""
        now = self.clock.now()

        def go(s: Any) -> None:
            c = s.connection()
            if not again:
                assert transitions.to_admitted(c, wid, "n1", "", now)
                assert transitions.to_starting(c, wid, {"job": 1}, "", now)
            assert transitions.to_running(c, wid, "running", now)

        self.write(go)

    def requeue(self, wid: int, at: datetime, price: bool = False) -> int:
        """Slurm requeued it at ``at``; the reconciler learns it now: the run's charge is
        closed in the same transaction as the move out of RUNNING."""
        now = self.clock.now()

        def go(s: Any) -> int:
            written = close_run(
                s,
                wid,
                at=at,
                now=now,
                tz=TZ,
                entry_seconds=ENTRY,
                price_of=(lambda pool, requested: Price(RATE, 1 / 64)) if price else None,
            )
            assert transitions.requeue(
                s.connection(), wid, {"job": 1}, "requeued by Slurm: n1 failed", now
            )
            return written

        return int(self.write(go))

    def end(self, wid: int) -> None:
        now = self.clock.now()
        self.write(
            lambda s: transitions.to_ended(
                s.connection(), wid, S.STOPPED, [S.RUNNING], now, reason="completed"
            )
        )

    def entries(self, wid: int) -> list[Any]:
        def read(s: Any) -> list[Any]:
            return list(
                s.execute(
                    select(LedgerEntry)
                    .where(LedgerEntry.workload_id == wid)
                    .order_by(LedgerEntry.start)
                ).scalars()
            )

        return list(self.run(self.db.run_read(read)))

    def open_amount(self, wid: int) -> int:
        def read(s: Any) -> int:
            return int(
                s.execute(
                    select(OpenCharge.amount).where(
                        OpenCharge.workload_id == wid, ~OpenCharge.closed
                    )
                ).scalar()
                or 0
            )

        return int(self.run(self.db.run_read(read)))

    def consistent(self) -> None:
        days, entries, open_ = self.run(self.db.run_read(totals))
        assert days == entries + open_


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    loop = asyncio.new_event_loop()
    cleanup: list[Callable[[], Any]] = []
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('close') / 'ledger.sqlite'}"
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


def no_overlap(entries: list[Any], gap: tuple[datetime, datetime]) -> None:
    for e in entries:
        assert e.amount == charge(e.rate, elapsed_ms(e.start, e.end))
        assert e.start < e.end
        assert e.end <= gap[0] or e.start >= gap[1], f"{e.key} is charged in the gap"
    for a, b in zip(entries, entries[1:], strict=False):
        assert a.end <= b.start, f"{a.key} and {b.key} overlap"


def test_a_requeued_run_is_charged_to_its_end_and_the_next_from_its_start(world: World) -> None:
    """Run 1h 30m 17s (over Berlin's midnight at 23:00 UTC), requeued; 25 minutes later it runs
    again for 2 h 10 m. Passes every few minutes, one of them late."""
    base = world.clock.now().replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    s1 = base + timedelta(minutes=20, seconds=5)
    world.at(s1)
    wid = world.submit()
    world.start(wid)
    for minutes in (3, 17, 45, 61, 98):  # the last pass is after the requeue
        world.at(s1 + timedelta(minutes=minutes))
        world.meter_pass()
        world.consistent()
    requeued = s1 + timedelta(hours=1, minutes=30, seconds=17)
    # The reconciler hears of it at 98 min: the pass at 98 min charged past it already, and
    # charges never go backwards.
    charged_to = s1 + timedelta(minutes=98)
    assert world.requeue(wid, requeued) >= 1
    world.consistent()
    assert world.open_amount(wid) == 0
    for minutes in (110, 123):  # passes in the gap charge nothing
        world.at(s1 + timedelta(minutes=minutes))
        world.meter_pass()
        world.consistent()
    s2 = s1 + timedelta(minutes=123, seconds=31)
    world.at(s2)
    world.start(wid, again=True)
    e2 = s2 + timedelta(hours=2, minutes=10)
    for minutes in (1, 59, 61, 130):
        world.at(s2 + timedelta(minutes=minutes))
        if minutes == 130:
            world.at(e2)
            world.end(wid)
            world.at(e2 + timedelta(seconds=30))
        world.meter_pass()
        world.consistent()
    entries = world.entries(wid)
    no_overlap(entries, (charged_to, s2))
    assert sum(e.amount for e in entries) == cost(s1, charged_to) + cost(s2, e2)
    assert world.open_amount(wid) == 0
    # Keys: each run's first entry from its own start, the others on the hour.
    assert entries[0].start == s1 and any(e.start == s2 for e in entries)


def test_a_run_the_meter_never_saw_is_charged_from_its_start(world: World) -> None:
    """Started and requeued between two passes: no open charge yet. With its price the run is
    charged whole; nothing is left open for the next pass to find."""
    world.at(world.clock.now() + timedelta(minutes=5))
    wid = world.submit()
    s1 = world.clock.now()
    world.start(wid)
    world.at(s1 + timedelta(seconds=40))
    assert world.requeue(wid, s1 + timedelta(seconds=39), price=True) == 1
    world.meter_pass()
    world.consistent()
    [entry] = world.entries(wid)
    assert (entry.start, entry.end) == (s1, s1 + timedelta(seconds=39))
    assert entry.amount == charge(RATE, 39_000)


def test_closing_twice_or_without_a_charge_writes_nothing(world: World) -> None:
    world.at(world.clock.now() + timedelta(minutes=5))
    wid = world.submit()
    world.start(wid)
    world.at(world.clock.now() + timedelta(minutes=2))
    world.meter_pass()
    now = world.clock.now()

    def twice(s: Any) -> tuple[int, int]:
        first = close_run(s, wid, at=now, now=now, tz=TZ, entry_seconds=ENTRY)
        again = close_run(s, wid, at=now, now=now, tz=TZ, entry_seconds=ENTRY)
        assert transitions.requeue(s.connection(), wid, {"job": 1}, "requeued", now)
        return first, again

    assert world.write(twice) == (1, 0)
    world.consistent()


def test_an_ended_workloads_charge_is_left_as_it_is(world: World) -> None:
    """A late requeue of a workload that has ended (its charge closed): nothing is written and
    the closed charge stays, so that the meter never takes its recent start for a new run."""
    world.at(world.clock.now() + timedelta(minutes=5))
    wid = world.submit()
    world.start(wid)
    world.at(world.clock.now() + timedelta(minutes=3))
    world.end(wid)
    world.meter_pass()
    cost_before = sum(e.amount for e in world.entries(wid))
    now = world.clock.now()
    written = world.write(
        lambda s: close_run(s, wid, at=now, now=now, tz=TZ, entry_seconds=ENTRY, price_of=None)
    )
    assert written == 0
    world.at(now + timedelta(minutes=1))
    world.meter_pass()
    assert sum(e.amount for e in world.entries(wid)) == cost_before == charge(RATE, 180_000)
    world.consistent()


def test_the_days_of_a_closed_run_are_the_meters(world: World) -> None:
    """Closed across Berlin's midnight: each day gets what ran in it, as a pass would give."""
    world.at(world.clock.now() + timedelta(days=1))
    midnight = world.clock.now().astimezone(UTC).replace(hour=23, minute=0, second=0, microsecond=0)
    if midnight <= world.clock.now():
        midnight += timedelta(days=1)
    s1 = midnight - timedelta(minutes=50)
    world.at(s1)
    wid = world.submit()
    world.start(wid)
    world.at(s1 + timedelta(minutes=10))
    world.meter_pass()
    world.at(midnight + timedelta(minutes=20))
    world.requeue(wid, midnight + timedelta(minutes=15))

    def read(s: Any) -> dict[str, float]:
        rows = s.execute(
            select(UsageDay.day, UsageDay.cpu_seconds).where(
                UsageDay.day >= (midnight - timedelta(days=1)).date()
            )
        )
        return {d.isoformat(): c for d, c in rows}

    days = world.run(world.db.run_read(read))
    berlin_day = (midnight + timedelta(hours=1)).date().isoformat()
    before = (midnight - timedelta(hours=1)).date().isoformat()
    assert days[before] == pytest.approx(50 * 60.0)
    assert days[berlin_day] == pytest.approx(15 * 60.0)
    world.consistent()


@pytest.mark.timeout(600)
@settings(
    max_examples=int(os.environ.get("LEDGER_EXAMPLES", "15")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    run1=st.integers(1, 4 * 3600),
    noticed=st.integers(0, 600),
    gap=st.integers(0, 3 * 3600),
    run2=st.integers(1, 4 * 3600),
    passes=st.lists(st.integers(1, 5 * 3600), max_size=6),
    offset=st.integers(0, 3599),
)
def test_run_requeue_run_costs_exactly_the_two_runs(
    world: World, run1: int, noticed: int, gap: int, run2: int, passes: list[int], offset: int
) -> None:
    """Any run, requeued at any instant, noticed any time later (passes in between), any gap,
    any second run: the entries add up to the two runs' charges, to the millionth."""
    world.at(world.clock.now() + timedelta(days=1, seconds=offset))
    wid = world.submit()
    s1 = world.clock.now()
    world.start(wid)
    requeued = s1 + timedelta(seconds=run1)
    seen = requeued + timedelta(seconds=noticed)
    last = s1
    for p in sorted(set(passes)):
        t = s1 + timedelta(seconds=p)
        if t >= seen:
            break
        world.at(t)
        world.meter_pass()
        last = t
    world.at(seen)
    world.requeue(wid, requeued, price=True)
    world.consistent()
    charged_to = max(requeued, last)
    s2 = seen + timedelta(seconds=gap)
    world.at(s2)
    world.meter_pass()
    world.start(wid, again=True)
    for p in sorted(set(passes)):
        if p < run2:
            world.at(s2 + timedelta(seconds=p))
            world.meter_pass()
    e2 = s2 + timedelta(seconds=run2)
    world.at(e2)
    world.end(wid)
    world.at(e2 + timedelta(seconds=1))
    world.meter_pass()
    world.consistent()
    entries = world.entries(wid)
    no_overlap(entries, (charged_to, s2))
    assert sum(e.amount for e in entries) == cost(s1, charged_to) + cost(s2, e2)


# -- the usage import's batch (``charge_externals``): the same rules as one at a time -------


@pytest.mark.timeout(600)
@settings(
    max_examples=int(os.environ.get("LEDGER_EXAMPLES", "15")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    spans=st.lists(
        st.tuples(st.integers(0, 3 * 86_400), st.integers(1, 2 * 86_400), st.integers(1, 4)),
        min_size=1,
        max_size=8,
    ),
    repeat=st.integers(0, 7),
)
def test_a_batch_of_external_spans_is_charged_as_one_at_a_time(
    world: World, spans: list[tuple[int, int, int]], repeat: int
) -> None:
    """Any spans (over Berlin's midnights), some given twice in the batch and all again in a
    second batch: each written once, each day's total the sum of its telescoped parts."""
    world.at(world.clock.now() + timedelta(days=4))
    base = world.clock.now()
    batch = uuid.uuid4().hex[:8]
    charges = [
        ExternalCharge(
            external_id=f"hpc:{batch}{i}:2026-01-01T00:00:00Z",
            account_id=world.ids["account_id"],
            user_id=world.ids["user_id"],
            pool_id=world.ids["pool_id"],
            start=base + timedelta(seconds=a),
            end=base + timedelta(seconds=a + n),
            requested=Resources.of(cpus),
            rate=RATE * cpus,
            share=cpus / 64,
        )
        for i, (a, n, cpus) in enumerate(spans)
    ]
    twice = charges + charges[: repeat % (len(charges) + 1)]
    expected: dict[str, int] = {}
    for c in charges:
        before = 0
        for day, upto in split_at_midnight(c.start, c.end, TZ):
            part = charge(c.rate, upto) - before
            before += part
            expected[day.isoformat()] = expected.get(day.isoformat(), 0) + part

    def days(s: Any) -> dict[str, int]:
        rows = s.execute(
            select(UsageDay.day, UsageDay.amount).where(
                UsageDay.day >= (base - timedelta(days=1)).date()
            )
        )
        out: dict[str, int] = {}
        for d, amount in rows:
            out[d.isoformat()] = out.get(d.isoformat(), 0) + amount
        return out

    before_days = world.run(world.db.run_read(days))

    def go(s: Any) -> int:
        return charge_externals(s, source="slurm", charges=twice, tz=TZ, now=base)

    assert world.write(go) == len(charges)
    assert world.write(go) == 0
    world.consistent()
    after = world.run(world.db.run_read(days))
    delta = {d: after.get(d, 0) - before_days.get(d, 0) for d in after}
    assert {d: v for d, v in delta.items() if v} == {d: v for d, v in expected.items() if v}
