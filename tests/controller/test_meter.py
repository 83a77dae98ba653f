"""The meter against the real controller and the FakeBackend: charges of requested resources
× wall time × the pool's rates, closed every interval, one entry per span of the clock and
at the end, measured use beside them, refunds for endings of ours, a rate change from then
on, and the meter's route reading the ledger (docs/design/0004-ledger.md)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from allotment.config import parse_policy
from allotment.controller.view import load_policy_view, usage
from allotment.db.ledger import charge_external, totals, workload_cost
from allotment.db.policy_sync import apply_policy
from allotment.db.tables import Account, LedgerEntry, OpenCharge, UsageDay, User, Workload
from allotment.domain.ledger import Measured, charge, elapsed_ms
from allotment.domain.resources import Resources
from tests.controller.conftest import Fast

#: One CPU at 2 credits an hour and 1 GiB at 1: a ``small`` job costs 3 credits an hour.
POLICY = """
accounts:
  lab:
    shares: 1
    members: [alice]
pools:
  workstation:
    backend: local
    nodes:
      - {name: ws1, cpus: 4, memory: 16G}
    rates: {cpu: 2, memory: 1}
profiles:
  small:
    pool: workstation
    size: {cpus: 1, memory: 1G}
sessions: {cull_idle: 1h, cull_warning: 10m}
scheduling: {stop_grace: 1s}
accounting: {interval: 1m, entry: 1h, time_zone: Europe/Berlin}
"""

RATE = 3_000_000  # millionths an hour


@pytest.fixture
def policy() -> str:
    return POLICY


async def _entries(fast: Fast, wid: int) -> list[LedgerEntry]:
    async with fast.controller.db.read() as s:
        rows = await s.execute(
            select(LedgerEntry).where(LedgerEntry.workload_id == wid).order_by(LedgerEntry.id)
        )
        return list(rows.scalars())


async def _consistent(fast: Fast) -> None:
    days, entries, open_ = await fast.controller.db.run_read(totals)
    assert days == entries + open_


async def _started(fast: Fast, wid: int) -> Workload:
    await fast.until(wid, "running")
    async with fast.controller.db.read() as s:
        return (await s.execute(select(Workload).where(Workload.id == wid))).scalar_one()


async def test_a_running_job_is_charged_each_pass_and_an_entry_per_hour(fast: Fast) -> None:
    wid = await fast.submit()
    w = await _started(fast, wid)
    assert w.started_at is not None
    meter = fast.controller.meter
    await meter.pass_once()  # opens its charge
    for _ in range(90):  # an hour and a half, a minute at a time
        fast.clock.advance(60)
        await meter.pass_once()
        await _consistent(fast)
    now = fast.clock.now()
    async with fast.controller.db.read() as s:
        cost = await workload_cost(s, wid)
    assert cost == charge(RATE, elapsed_ms(w.started_at, now))
    entries = await _entries(fast, wid)
    # The clock started at midnight UTC: spans end on the hour, one closed so far.
    assert [(e.start, e.end) for e in entries] == [
        (w.started_at, w.started_at.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1))
    ]
    assert entries[0].key.startswith(f"w:{wid}:")
    assert entries[0].amount == charge(RATE, elapsed_ms(entries[0].start, entries[0].end))
    # It ends: its last entry is written and its charge closed; later passes add nothing.
    fast.backend.finish(wid)
    done = await fast.until(wid, "stopped")
    async with fast.controller.db.read() as s:
        ended = (await s.execute(select(Workload.ended_at).where(Workload.id == wid))).scalar_one()
    fast.clock.advance(120)
    await meter.pass_once()
    await meter.pass_once()
    entries = await _entries(fast, wid)
    assert len(entries) == 2 and entries[-1].end == ended
    assert sum(e.amount for e in entries) == charge(RATE, elapsed_ms(w.started_at, ended))
    async with fast.controller.db.read() as s:
        closed = (
            await s.execute(select(OpenCharge.closed).where(OpenCharge.workload_id == wid))
        ).scalar_one()
        assert closed
        assert await workload_cost(s, wid) == sum(e.amount for e in entries)
    await _consistent(fast)
    assert done["status"] == "stopped"


async def test_a_day_boundary_of_the_site_splits_the_daily_totals(fast: Fast) -> None:
    # Berlin's midnight is 23:00 UTC in winter: start at 22:30 UTC, run an hour.
    fast.clock.advance(22.5 * 3600)
    wid = await fast.submit()
    await _started(fast, wid)
    meter = fast.controller.meter
    await meter.pass_once()
    fast.clock.advance(3600)
    await meter.pass_once()  # one late pass crosses a span's end and the site's midnight
    async with fast.controller.db.read() as s:
        days = (await s.execute(select(UsageDay.day, UsageDay.amount))).all()
    by_day = {d.isoformat(): a for d, a in days}
    assert set(by_day) == {"2026-01-01", "2026-01-02"}
    assert by_day["2026-01-01"] == charge(RATE, 30 * 60_000)
    assert sum(by_day.values()) == charge(RATE, 3600_000)
    await _consistent(fast)


async def test_measured_use_is_recorded_beside_the_entry(fast: Fast) -> None:
    wid = await fast.submit()
    await _started(fast, wid)
    meter = fast.controller.meter
    await meter.pass_once()
    fast.backend.measured[wid] = Measured(cpu_seconds=100.0, peak_memory=2**29)
    fast.clock.advance(1800)
    await meter.pass_once()
    fast.backend.measured[wid] = Measured(cpu_seconds=250.0, peak_memory=2**28)
    fast.clock.advance(1800)
    await meter.pass_once()  # the hour's entry: 250 CPU seconds, peak 512 MiB
    fast.backend.measured[wid] = Measured(cpu_seconds=300.0, peak_memory=2**28)
    fast.clock.advance(600)
    await meter.pass_once()
    fast.backend.finish(wid)
    await fast.until(wid, "stopped")
    await meter.pass_once()
    entries = await _entries(fast, wid)
    assert [e.used_cpu_seconds for e in entries] == [250.0, 50.0]
    assert entries[0].peak_memory == 2**29
    async with fast.controller.db.read() as s:
        used = (await s.execute(select(UsageDay.used_cpu_seconds))).scalars().all()
    assert sum(used) == 300.0


async def test_a_workload_that_vanished_is_refunded(fast: Fast) -> None:
    wid = await fast.submit()
    await _started(fast, wid)
    meter = fast.controller.meter
    await meter.pass_once()
    fast.clock.advance(5400)
    await meter.pass_once()
    fast.backend.vanish(wid)
    w = await fast.until(wid, "failed")
    assert "vanished" in w["reason"]
    await meter.pass_once()
    entries = await _entries(fast, wid)
    assert entries[-1].kind == "refund" and entries[-1].key == f"w:{wid}:refund"
    assert sum(e.amount for e in entries) == 0
    async with fast.controller.db.read() as s:
        assert await workload_cost(s, wid) == 0
    await _consistent(fast)


async def test_a_refund_is_given_back_to_the_days_that_paid(fast: Fast) -> None:
    wid = await fast.submit()
    await _started(fast, wid)
    meter = fast.controller.meter
    await meter.pass_once()
    fast.clock.advance(30 * 3600)  # over a midnight: two days paid
    await meter.pass_once()
    async with fast.controller.db.read() as s:
        paid = (await s.execute(select(UsageDay.day, UsageDay.amount))).all()
    assert len({d for d, _ in paid}) >= 2 and all(a > 0 for _, a in paid)
    fast.backend.vanish(wid)
    await fast.until(wid, "failed")
    await meter.pass_once()
    async with fast.controller.db.read() as s:
        days = (await s.execute(select(UsageDay.day, UsageDay.amount))).all()
    # Each day that paid is paid back, not the day it ended on (a budget period of its own).
    assert {d for d, _ in days} == {d for d, _ in paid}
    assert all(a == 0 for _, a in days), days
    await _consistent(fast)


async def test_a_failure_of_its_own_is_charged(fast: Fast) -> None:
    wid = await fast.submit()
    await _started(fast, wid)
    await fast.controller.meter.pass_once()
    fast.clock.advance(600)
    fast.backend.finish(wid, 1)
    await fast.until(wid, "failed")
    await fast.controller.meter.pass_once()
    entries = await _entries(fast, wid)
    assert [e.kind for e in entries] == ["charge"]
    assert entries[0].amount == charge(RATE, 600_000)


async def test_a_rate_change_applies_from_then_on(fast: Fast) -> None:
    wid = await fast.submit()
    w = await _started(fast, wid)
    assert w.started_at is not None
    meter = fast.controller.meter
    await meter.pass_once()
    fast.clock.advance(600)
    await meter.pass_once()
    changed = parse_policy(POLICY.replace("rates: {cpu: 2, memory: 1}", "rates: {cpu: 8}"))
    async with fast.controller.db.write() as s:
        await apply_policy(s, changed, actor="admin", now=fast.clock.now())
    await meter.pass_once()  # the change is seen: a new span at 8 an hour from here
    fast.clock.advance(600)
    await meter.pass_once()
    entries = await _entries(fast, wid)
    assert [e.rate for e in entries] == [RATE]
    assert entries[0].amount == charge(RATE, 600_000)
    async with fast.controller.db.read() as s:
        assert await workload_cost(s, wid) == charge(RATE, 600_000) + charge(8_000_000, 600_000)
    await _consistent(fast)


async def test_a_step_down_to_another_profile_starts_a_new_span(fast: Fast) -> None:
    wid = await fast.submit()
    await _started(fast, wid)
    meter = fast.controller.meter
    await meter.pass_once()
    fast.clock.advance(600)
    await meter.pass_once()
    async with fast.controller.db.write() as s:  # as a budget's step-down does (lane B)
        await s.execute(update(Workload).where(Workload.id == wid).values(millicpus=500))
    fast.clock.advance(600)
    await meter.pass_once()
    entries = await _entries(fast, wid)
    assert len(entries) == 1 and entries[0].millicpus == 1000
    fast.clock.advance(600)
    await meter.pass_once()
    async with fast.controller.db.read() as s:
        cost = await workload_cost(s, wid)
    # The change is seen at the next pass: charged at the old rate up to it (one interval).
    assert cost == charge(RATE, 1_200_000) + charge(2_000_000, 600_000)


async def test_the_meter_route_reads_the_ledger(fast: Fast) -> None:
    wid = await fast.submit()
    await _started(fast, wid)
    await fast.controller.meter.pass_once()
    fast.clock.advance(1200)
    await fast.controller.meter.pass_once()
    fast.clock.advance(30)  # not charged yet: the route says what the ledger says
    async with fast.client() as c:
        r = await c.get(f"workloads/{wid}/meter")
    assert r.status_code == 200, r.text
    assert r.json()["cost"] == 1.0
    assert r.json()["cost_per_hour"] == 3.0


async def test_fair_share_usage_is_read_from_the_ledger(fast: Fast) -> None:
    wid = await fast.submit()
    await _started(fast, wid)
    meter = fast.controller.meter
    await meter.pass_once()
    fast.clock.advance(600)
    await meter.pass_once()
    fast.clock.advance(60)  # not yet charged: counted from the open charge
    now = fast.clock.now()

    def read(s: Any) -> dict[tuple[str, str], float]:
        view = load_policy_view(s)
        assert view is not None
        return usage(s, view, now)

    used = await fast.controller.db.run_read(read)
    # A quarter of the node (one of its four CPUs) for 660 seconds, barely decayed (its
    # submitter is the admin token's user).
    ((account, _), share_seconds), *others = used.items()
    assert account == "lab" and not others
    assert share_seconds == pytest.approx(0.25 * 660, rel=1e-2)
    async with fast.controller.db.write() as s:  # the workloads table is not what it reads
        await s.execute(update(Workload).where(Workload.id == wid).values(started_at=None))
    assert await fast.controller.db.run_read(read) == used


async def test_work_allotment_did_not_submit_is_charged_once_by_its_key(fast: Fast) -> None:
    """A Slurm job imported from accounting: same ledger, same totals, its key naming the
    cluster, the job id and the submit time (job ids repeat)."""
    async with fast.controller.db.read() as s:
        account = (await s.execute(select(Account.id).where(Account.path == "lab"))).scalar_one()
        user = (await s.execute(select(User.id).limit(1))).scalar_one()
    start = datetime(2026, 1, 1, 22, 30, tzinfo=UTC)  # Berlin's midnight at 23:00 UTC

    def charge_it(s: Any) -> bool:
        return charge_external(
            s,
            source="slurm",
            external_id="hpc:4242:2026-01-01T20:00:00Z",
            account_id=account,
            user_id=user,
            pool_id=None,
            start=start,
            end=start + timedelta(hours=1),
            requested=Resources.of(2),
            rate=RATE,
            tz="Europe/Berlin",
            now=start + timedelta(hours=2),
            measured=Measured(cpu_seconds=5000.0),
        )

    assert await fast.controller.db.run_write(charge_it)
    assert not await fast.controller.db.run_write(charge_it)  # again: nothing written
    async with fast.controller.db.read() as s:
        entries = (await s.execute(select(LedgerEntry))).scalars().all()
        days = (await s.execute(select(UsageDay).order_by(UsageDay.day))).scalars().all()
    assert [e.key for e in entries] == [
        "slurm:hpc:4242:2026-01-01T20:00:00Z:2026-01-01T22:30:00.000000Z"
    ]
    assert entries[0].workload_id is None and entries[0].amount == RATE
    assert [(d.day.isoformat(), d.amount, d.cpu_seconds) for d in days] == [
        ("2026-01-01", RATE // 2, 3600.0),
        ("2026-01-02", RATE // 2, 3600.0),
    ]
    assert sum(d.used_cpu_seconds for d in days) == 5000.0
    await _consistent(fast)
