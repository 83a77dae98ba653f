"""The dashboard's Account page with a year of history and 200 members: server time.

An account ``physics/lab-a`` with 200 members (and ``physics/lab-b`` beside it with 50) gets a
year of daily totals (``usage_days``: every member, every day, two profiles: 146,000 rows in
lab-a, 182,500 in all), one ledger entry per member and day (91,250), and 500 waiting
workloads with places. The page is then rendered through the ASGI app in-process with httpx
(no network: what is timed is the service's own work, database included), as the account's
manager would open it: the default 30-day window, and the whole year (the stacked plot over
365 days, the leaderboard over the year). Target: p95 ≤ 300 ms.

    python -m benchmarks.dashboard [--requests 100] [--out benchmarks/results/dashboard.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import select

from allotment.api.app import Settings, create_app
from allotment.clock import FakeClock
from allotment.config import parse_policy
from allotment.db.engine import Database, sqlite_url
from allotment.db.tables import Account, LedgerEntry, Pool, Profile, UsageDay, User, Workload
from benchmarks.harness import commit, machine, postgres

MEMBERS = 200
OTHERS = 50
DAYS = 365
NOW = datetime(2026, 12, 15, 12, 0, tzinfo=UTC)


def policy_text() -> str:
    members = ", ".join(f"u{i:03d}" for i in range(MEMBERS))
    others = ", ".join(f"o{i:03d}" for i in range(OTHERS))
    return f"""
currency: credits
accounts:
  physics: {{managers: [dean]}}
  lab-a: {{parent: physics, managers: [alice], members: [{members}]}}
  lab-b: {{parent: physics, members: [{others}]}}
pools:
  box:
    nodes: [{{name: n1, cpus: 256, memory: 2048G}}]
    rates: {{cpu: 0.01, memory: 0.001}}
profiles:
  small: {{pool: box, size: {{cpus: 1, memory: 4G}}}}
  large: {{pool: box, size: {{cpus: 16, memory: 64G}}}}
allocations:
  - account: lab-a
    pool: box
    quota: {{cpus: 128, memory: 1024G}}
    budget: {{amount: 50000, period: month}}
"""


async def fill(database_url: str) -> dict[str, int]:
    db = Database(database_url)
    rng = random.Random(14)
    async with db.read() as s:
        accounts = dict((await s.execute(select(Account.path, Account.id))).all())
        users = dict((await s.execute(select(User.name, User.id))).all())
        pool = (await s.execute(select(Pool.id))).scalar_one()
        profiles = [p for (p,) in await s.execute(select(Profile.id).order_by(Profile.id))]
    people = [(users[f"u{i:03d}"], accounts["physics/lab-a"]) for i in range(MEMBERS)] + [
        (users[f"o{i:03d}"], accounts["physics/lab-b"]) for i in range(OTHERS)
    ]
    first = NOW.date() - timedelta(days=DAYS - 1)
    usage_rows, ledger_rows = [], []
    counts = {"usage_days": 0, "ledger_entries": 0, "waiting_workloads": 0}

    async def flush() -> None:
        async with db.writer.begin() as conn:
            if usage_rows:
                await conn.execute(UsageDay.__table__.insert(), usage_rows)
            if ledger_rows:
                await conn.execute(LedgerEntry.__table__.insert(), ledger_rows)
        counts["usage_days"] += len(usage_rows)
        counts["ledger_entries"] += len(ledger_rows)
        usage_rows.clear()
        ledger_rows.clear()

    for d in range(DAYS):
        day: date = first + timedelta(days=d)
        for user, account in people:
            total = 0
            for profile in profiles:
                amount = rng.randrange(100_000, 5_000_000)
                total += amount
                cpu = amount / 10_000 * 3600
                usage_rows.append(
                    {
                        "day": day, "account_id": account, "user_id": user, "pool_id": pool,
                        "profile_id": profile, "amount": amount, "cpu_seconds": cpu,
                        "memory_gib_seconds": cpu * 4, "gpu_seconds": 0.0,
                        "share_seconds": cpu / 256, "used_cpu_seconds": cpu * rng.random(),
                    }
                )  # fmt: skip
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            ledger_rows.append(
                {
                    "key": f"bench:{user}:{day}", "kind": "charge", "source": "local",
                    "workload_id": None, "external_id": None, "account_id": account,
                    "user_id": user, "pool_id": pool, "profile_id": profiles[0],
                    "start": start, "end": start + timedelta(days=1), "millicpus": 1000,
                    "memory": 4 * 2**30, "gpus": {}, "rate": 14_000, "amount": total,
                    "used_cpu_seconds": None, "peak_memory": None, "gpu_utilisation": None,
                    "note": "", "created_at": start,
                }
            )  # fmt: skip
        if len(usage_rows) > 20_000:
            await flush()
    await flush()
    waiting = []
    for i in range(500):
        user, account = people[i % MEMBERS]
        waiting.append(
            {
                "kind": "job", "name": f"sweep-{i}", "user_id": user, "account_id": account,
                "pool_id": pool, "profile_id": profiles[1], "millicpus": 16_000,
                "memory": 64 * 2**30, "gpus": {}, "target": 3, "status": 0,
                "reason": "Waiting for capacity", "position": i + 1,
                "expected_start": NOW + timedelta(minutes=10 * i), "created_at": NOW,
                "updated_at": NOW,
            }
        )  # fmt: skip
    async with db.writer.begin() as conn:
        await conn.execute(Workload.__table__.insert(), waiting)
    counts["waiting_workloads"] = len(waiting)
    async with db.writer.connect() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.exec_driver_sql("VACUUM ANALYZE")
        else:
            await conn.exec_driver_sql("ANALYZE")
            await conn.commit()
    await db.dispose()
    return counts


def _percentiles(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    return {
        "p50_ms": round(statistics.median(samples), 1),
        "p95_ms": round(samples[int(0.95 * len(samples)) - 1], 1),
        "p99_ms": round(samples[int(0.99 * len(samples)) - 1], 1),
        "max_ms": round(samples[-1], 1),
    }


async def measure(database_url: str, data_dir: Path, requests: int) -> dict[str, object]:
    clock = FakeClock(NOW)
    app = create_app(
        Settings(
            database_url=database_url,
            data_dir=data_dir,
            policy=parse_policy(policy_text(), environ={}),
            token_cache_seconds=60,
        ),
        clock=clock,
    )
    out: dict[str, object] = {}
    async with app.router.lifespan_context(app):
        out["rows"] = await fill(database_url)
        token = (data_dir / "admin-token").read_text().strip()
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://bench/services/allotment/dashboard/",
            headers={"Authorization": f"token {token}"},
            timeout=60,
        ) as c:
            for label, params in (
                ("account page, 30 days", {}),
                ("account page, a year", {"days": "365"}),
            ):
                r = await c.get("accounts/physics/lab-a", params=params)
                assert r.status_code == 200, r.text[:500]
                assert "u199" in r.text or "others" in r.text
                times = []
                for _ in range(requests):
                    t = time.perf_counter()
                    r = await c.get("accounts/physics/lab-a", params=params)
                    times.append((time.perf_counter() - t) * 1000)
                    assert r.status_code == 200
                out[label] = _percentiles(times)
                print(f"  {label:24} {out[label]}", flush=True)
            out["page_bytes"] = len(r.content)
    return out


def run(requests: int, databases: list[str]) -> dict[str, object]:
    results: dict[str, object] = {}
    with postgres() as pg_url:
        for name in databases:
            with tempfile.TemporaryDirectory(prefix="allotment-bench-dash.") as d:
                url = pg_url if name == "postgresql" else sqlite_url(Path(d) / "db")
                print(name, flush=True)
                results[name] = asyncio.run(measure(url, Path(d) / "data", requests))
    return {
        "benchmark": "dashboard account page: a year of history, 200 members",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit(),
        "machine": machine(),
        "requests_per_query": requests,
        "target": {"p95_ms": 300},
        "results": results,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--databases", nargs="+", default=["postgresql", "sqlite"])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/dashboard.json"))
    args = ap.parse_args()
    args.out.write_text(json.dumps(run(args.requests, args.databases), indent=2) + "\n")


if __name__ == "__main__":
    main()
