"""Listing workloads: page 1 and page 500 of 100,000 workloads, filtered by account.

100,000 workloads are written straight into the database (the listing, not the writing, is
measured here), spread over four accounts with 25,000 each. Then, over HTTP with keep-alive,
each query runs `--requests` times and its latency percentiles are recorded:

- page 1 of one account (`?account=physics/lab-b&limit=50`);
- page 500 of that account by page number (`&page=500`, an OFFSET of 24,950 rows);
- page 500 by cursor (`&cursor=…`, keyset: what `allot` and the client use);
- page 1 of an account's subtree (`physics/lab-a`: 75,000 rows), and with a state filter.

    python -m benchmarks.listing [--requests 200] [--out benchmarks/results/listing.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import select

from allotment.db.engine import Database, sqlite_url
from allotment.db.tables import Account, User, Workload
from benchmarks.harness import commit, machine, postgres, served

N = 100_000
ACCOUNTS = ["physics/lab-b", "physics/lab-a", "physics/lab-a/proj-x", "physics/lab-a/proj-y"]


async def fill(database_url: str) -> None:
    db = Database(database_url)
    rng = random.Random(7)
    async with db.write() as s:
        accounts = {
            a.path: a.id for a in (await s.execute(select(Account))).scalars() if a.path in ACCOUNTS
        }
        users = []
        for i in range(50):
            u = User(name=f"user{i:02d}", created_at=datetime.now(UTC))
            s.add(u)
            users.append(u)
        await s.flush()
        user_ids = [u.id for u in users]
    start = datetime(2026, 1, 1, tzinfo=UTC)
    table = Workload.__table__
    for chunk in range(0, N, 5000):
        rows = []
        for i in range(chunk, chunk + 5000):
            at = start + timedelta(seconds=30 * i)
            rows.append(
                {
                    "kind": "job",
                    "name": "",
                    "user_id": rng.choice(user_ids),
                    "account_id": accounts[ACCOUNTS[i % 4]],
                    "pool_id": None,
                    "profile_id": None,
                    "millicpus": 1000,
                    "memory": 2**30,
                    "gpus": {},
                    "target": 5,
                    "status": rng.choice([0, 3, 5, 5, 5, 6]),
                    "reason": "",
                    "command": None,
                    "max_runtime": 3600,
                    "idempotency_key": None,
                    "created_at": at,
                    "updated_at": at,
                }
            )
        async with db.writer.begin() as conn:
            await conn.execute(table.insert(), rows)
    # Steady state: what autovacuum (PostgreSQL) would have done by now; VACUUM also sets the
    # visibility map that index-only scans need. SQLite only needs its statistics.
    async with db.writer.connect() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.exec_driver_sql("VACUUM ANALYZE workloads")
        else:
            await conn.exec_driver_sql("ANALYZE")
            await conn.commit()
    await db.dispose()


def _percentiles(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    return {
        "p50_ms": round(statistics.median(samples), 2),
        "p90_ms": round(samples[int(0.90 * len(samples)) - 1], 2),
        "p99_ms": round(samples[int(0.99 * len(samples)) - 1], 2),
    }


def measure(api: str, token: str, requests: int) -> dict[str, dict[str, float]]:
    out = {}
    with httpx.Client(base_url=api, headers={"Authorization": f"token {token}"}, timeout=60) as c:
        cursor = None
        for _ in range(499):  # walk to page 500 once, to know its cursor
            params = {
                "account": "physics/lab-b",
                "limit": 50,
                **({"cursor": cursor} if cursor else {}),
            }
            cursor = c.get("workloads", params=params).json()["next_cursor"]
        queries = {
            "page 1 of one account": {"account": "physics/lab-b", "limit": 50},
            "page 500 by page number": {"account": "physics/lab-b", "limit": 50, "page": 500},
            "page 500 by cursor": {"account": "physics/lab-b", "limit": 50, "cursor": cursor},
            "page 1 of a subtree": {"account": "physics/lab-a", "limit": 50},
            "page 1, subtree and state": {
                "account": "physics/lab-a",
                "status": "running",
                "limit": 50,
            },
        }
        first = c.get("workloads", params=queries["page 500 by page number"]).json()["items"]
        by_cursor = c.get("workloads", params=queries["page 500 by cursor"]).json()["items"]
        assert [w["id"] for w in first] == [w["id"] for w in by_cursor], "pages disagree"
        assert len(first) == 50
        for label, params in queries.items():
            times = []
            for _ in range(requests):
                t = time.perf_counter()
                r = c.get("workloads", params=params)
                times.append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200, r.text
            out[label] = _percentiles(times)
            print(
                f"  {label:28} " + "  ".join(f"{k} {v:6.1f}" for k, v in out[label].items()),
                flush=True,
            )
    return out


def run(requests: int) -> dict[str, object]:
    results = {}
    with postgres() as pg_url:
        for name, url in (("sqlite", None), ("postgresql", pg_url)):
            with served(url) as (api, token, data_dir):
                asyncio.run(fill(url or sqlite_url(data_dir)))
                print(name, flush=True)
                results[name] = measure(api, token, requests)
    return {
        "benchmark": "listing workloads (100,000 rows, filtered by account)",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit(),
        "machine": machine(),
        "requests_per_query": requests,
        "target": {"p99_ms": 50},
        "results": results,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/listing.json"))
    args = ap.parse_args()
    args.out.write_text(json.dumps(run(args.requests), indent=2) + "\n")


if __name__ == "__main__":
    main()
