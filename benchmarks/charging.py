"""Charging: one meter pass over 10,000 running workloads, on SQLite and on PostgreSQL.

10,000 running workloads are written straight into the database (the pass, not the writing,
is measured). The meter (``controller/meter.py``) then passes as it does every
``accounting.interval``, its clock a minute further each time:

- the first pass, which opens 10,000 charges;
- ``--passes`` ordinary passes (each moves 10,000 charges on a minute, adds the minute to the
  day's totals): the target is at most 100 ms;
- a pass that crosses the hour, and so writes 10,000 ledger entries and starts new spans;
- a pass that also records 10,000 measurements (what backends measured: CPU seconds, peak
  memory), to show what recording them costs; measuring itself is the backends' (two small
  cgroup files a workload for the local backend) and is timed apart by the meter.

Then 100 workloads are charged through a whole day (a pass every 10 minutes) to count the
rows a running workload writes a day.

    python -m benchmarks.charging [--passes 20] [--out benchmarks/results/charging.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from allotment.clock import FakeClock
from allotment.config import parse_policy
from allotment.controller.meter import Meter
from allotment.db.engine import Database
from allotment.db.ledger import Price, meter_pass, totals
from allotment.db.policy_sync import apply_policy
from allotment.db.tables import WORKLOADS, Account, LedgerEntry, Pool, Profile, UsageDay, User
from allotment.domain.ledger import Measured
from allotment.domain.workloads import WorkloadState as S
from benchmarks.harness import commit, machine, postgres

N = 10_000
POLICY = """
accounts:
  lab: {members: [alice]}
pools:
  box:
    nodes: [{name: n1, cpus: 100000, memory: 100000G}]
    rates: {cpu: 0.05, memory: 0.01}
profiles:
  small: {pool: box, size: {cpus: 1, memory: 1G}}
accounting: {interval: 1m, entry: 1h}
"""
#: Five minutes past the hour: ordinary passes first, the hour later.
T0 = datetime(2026, 12, 2, 10, 5, tzinfo=UTC)


async def prepare(url: str, n: int, clock: FakeClock) -> Database:
    db = Database(url)
    await db.upgrade()
    async with db.write() as s:
        await apply_policy(s, parse_policy(POLICY, environ={}), actor="bench", now=clock.now())
    async with db.write() as s:
        ids = {
            "user_id": (await s.execute(select(User.id))).scalar_one(),
            "account_id": (await s.execute(select(Account.id))).scalar_one(),
            "pool_id": (await s.execute(select(Pool.id))).scalar_one(),
            "profile_id": (await s.execute(select(Profile.id))).scalar_one(),
        }
        rows = [
            {
                **ids,
                "kind": "job",
                "millicpus": 1000,
                "memory": 2**30,
                "gpus": {},
                "target": int(S.RUNNING),
                "status": int(S.RUNNING),
                "reason": "running on n1",
                "node": "n1",
                "created_at": clock.now() - timedelta(minutes=30),
                "updated_at": clock.now(),
                "started_at": clock.now() - timedelta(seconds=1800 + i % 1800),
            }
            for i in range(n)
        ]
        for chunk in range(0, n, 2000):
            await s.execute(WORKLOADS.insert(), rows[chunk : chunk + 2000])
    return db


async def timed(meter: Meter, clock: FakeClock, seconds: float) -> tuple[float, Any]:
    clock.advance(seconds)
    start = time.perf_counter()
    done = await meter.pass_once()
    return (time.perf_counter() - start) * 1000, done


async def run(url: str, passes: int) -> dict[str, Any]:
    clock = FakeClock(T0)
    db = await prepare(url, N, clock)
    meter = Meter(db, clock, {})
    first, opened = await timed(meter, clock, 0)
    assert opened.opened == N, opened
    ordinary = []
    for _ in range(passes):
        ms, done = await timed(meter, clock, 60)
        assert done.advanced == N and done.entries == 0, done
        ordinary.append(ms)
    to_hour = (T0.replace(minute=0) + timedelta(hours=1) - clock.now()).total_seconds() + 30
    hour, done = await timed(meter, clock, to_hour)
    assert done.entries == N, done
    # Recording measurements, as the local backend would give them for every workload.
    measured = {wid: Measured(cpu_seconds=30.0, peak_memory=2**28) for wid in range(1, N + 1)}
    clock.advance(60)
    start = time.perf_counter()
    await db.run_write(
        lambda s: meter_pass(
            s,
            now=clock.now(),
            entry_seconds=3600,
            tz="UTC",
            price_of=lambda pool, r: Price(60_000_000, 0.0),
            measured=measured,
        )
    )
    with_measured = (time.perf_counter() - start) * 1000
    days, entries, open_ = await db.run_read(totals)
    assert days == entries + open_
    await db.dispose()
    return {
        "workloads": N,
        "first_pass_ms": round(first, 1),
        "pass_ms": {
            "p50": round(statistics.median(ordinary), 1),
            "max": round(max(ordinary), 1),
            "all": [round(x, 1) for x in ordinary],
        },
        "hour_pass_ms": round(hour, 1),
        "pass_recording_10000_measurements_ms": round(with_measured, 1),
    }


async def rows_a_day(url: str) -> dict[str, Any]:
    """100 workloads charged through one whole day, a pass every 10 minutes."""
    clock = FakeClock(datetime(2026, 12, 2, tzinfo=UTC))
    db = await prepare(url, 100, clock)
    meter = Meter(db, clock, {})
    for _ in range(24 * 6):
        await meter.pass_once()
        clock.advance(600)

    def count(s: Any) -> tuple[int, int]:
        return (
            s.execute(select(func.count()).select_from(LedgerEntry)).scalar_one(),
            s.execute(select(func.count()).select_from(UsageDay)).scalar_one(),
        )

    entries, days = await db.run_read(count)
    await db.dispose()
    return {
        "workloads": 100,
        "ledger_entries_per_workload_day": entries / 100,
        "usage_day_rows": days,
        "note": "usage_days has one row per day, account, user, pool and profile, shared by "
        "all of that user's workloads there: at most one per running workload a day",
    }


async def main(passes: int, out: Path) -> None:
    result: dict[str, Any] = {
        "benchmark": "charging",
        "commit": commit(),
        "machine": machine(),
        "target_pass_ms": 100,
    }
    with tempfile.TemporaryDirectory() as d:
        url = f"sqlite+aiosqlite:///{d}/bench.sqlite"
        result["sqlite"] = await run(url, passes)
        result["rows_a_day"] = await rows_a_day(f"sqlite+aiosqlite:///{d}/day.sqlite")
    with postgres() as url:
        result["postgresql"] = await run(url, passes)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--passes", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/charging.json"))
    args = parser.parse_args()
    asyncio.run(main(args.passes, args.out))
