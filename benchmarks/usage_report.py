"""`allot usage` over a year of a busy site: 10 million ledger entries on PostgreSQL.

1,000 users each run work all year round (a year ending today, in UTC): 10,000 one-hour
ledger entries per user, as the meter writes them at the default `accounting.entry` of 1 h
(24 a day per running workload), over five accounts, two pools and profiles. The entries
and the daily totals that match them (what the meter keeps beside them, in the same
transactions) are generated inside PostgreSQL with ``generate_series`` and one grouped
``INSERT … SELECT``, then vacuumed and analysed, as autovacuum would have by then.

Measured, with a real `allot serve` on that database:

- the API query behind `allot usage` (``GET /usage``), over HTTP with keep-alive, for the
  heaviest reports (the whole year by user, by day, by week; an account's subtree; one user;
  the last 30 days), ``--requests`` times each: latency percentiles;
- `allot usage` end to end (a new process: Python's start, the HTTP call, the table), timed;
- the same whole-year report summed from the ledger itself, once, for comparison (why reports
  read the daily totals);
- the tables' sizes on disk (``pg_total_relation_size``, indexes included) and rows.

    python -m benchmarks.usage_report [--entries 10000000] [--requests 10]
        [--out benchmarks/results/usage_report.json]

Needs Debian's PostgreSQL (``scripts/pg``). Its data directory is created under /tmp, holds
some gigabytes, and is removed at the end. The server runs without fsync while it is filled
(only reads are measured; durability costs the writes, which benchmarks/charging.py measures).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from tests.support.hub import free_port
from tests.support.process import clean_env, wait_healthy

from benchmarks.harness import ROOT, commit, machine

USERS = 1000
ACCOUNTS = [
    "physics",
    "physics/lab-a",
    "physics/lab-b",
    "physics/lab-a/proj-x",
    "physics/lab-a/proj-y",
]
ALLOT = [sys.executable, "-m", "allotment"]


@contextmanager
def postgres() -> Iterator[str]:
    """A throw-away PostgreSQL under /tmp (fsync off: only reads are measured)."""
    d = tempfile.mkdtemp(prefix="allotment-bench-usage-pg.", dir="/tmp")
    url = subprocess.run(
        [str(ROOT / "scripts/pg"), "start", d, str(free_port())],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    try:
        yield url
    finally:
        subprocess.run([str(ROOT / "scripts/pg"), "stop", d], check=False)
        shutil.rmtree(d, ignore_errors=True)


async def fill(url: str, entries: int, last_day: date) -> dict[str, Any]:
    """Users, ledger entries and the matching daily totals, written by PostgreSQL itself."""
    per_user = entries // USERS
    first = datetime.combine(last_day - timedelta(days=364), datetime.min.time(), UTC)
    hours = 365 * 24
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    t0 = time.perf_counter()
    async with engine.connect() as c:
        accounts = [
            (
                await c.execute(text("SELECT id FROM accounts WHERE path = :p"), {"p": p})
            ).scalar_one()
            for p in ACCOUNTS
        ]
        pools = {n: i for n, i in await c.execute(text("SELECT name, id FROM pools"))}
        profiles = {n: i for n, i in await c.execute(text("SELECT name, id FROM profiles"))}
        await c.execute(
            text(
                "INSERT INTO users (name, created_at) SELECT 'u' || lpad(i::text, 4, '0'), now() "
                "FROM generate_series(0, :n - 1) AS i"
            ),
            {"n": USERS},
        )
        base = (
            await c.execute(text("SELECT min(id) FROM users WHERE name LIKE 'u____'"))
        ).scalar_one()
        # Entry n: user n % USERS, the k-th (k = n / USERS) hour of its work: hour k % 8760 of
        # the year, of a second workload at once for k beyond 8,760 (10,000 hours a user);
        # a workload runs a day (24 entries) under its own id; one in five users works on
        # the GPU pool. The numbers are ours (ids read
        # above), so they are written into the statement, typed, rather than bound.
        # Bulk loading: the table's foreign keys, unique key and secondary indexes are set
        # aside and built again afterwards (one sorted build each instead of 10 million
        # insertions); the result is the same table, indexes and constraints.
        await c.execute(text("SET maintenance_work_mem = '1GB'"))
        constraints = [
            (name, definition)
            for name, definition in await c.execute(
                text(
                    "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                    "WHERE conrelid = 'ledger_entries'::regclass AND contype IN ('f', 'u')"
                )
            )
        ]
        for name, _ in constraints:
            await c.execute(text(f'ALTER TABLE ledger_entries DROP CONSTRAINT "{name}"'))
        indexes = [
            (name, definition)
            for name, definition in await c.execute(
                text(
                    "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = "
                    "'ledger_entries' AND indexname <> 'ledger_entries_pkey'"
                )
            )
        ]
        for name, _ in indexes:
            await c.execute(text(f'DROP INDEX "{name}"'))
        n_users, gpu_pool, ws_pool = USERS, pools["gpu"], pools["workstation"]
        gpu_profile, small_profile = profiles["gpu-a100"], profiles["small"]
        ids = ", ".join(str(a) for a in accounts)
        await c.execute(
            text(
                f"""
                INSERT INTO ledger_entries (key, kind, source, workload_id, external_id,
                    account_id, user_id, pool_id, profile_id, start, "end", millicpus, memory,
                    gpus, rate, amount, used_cpu_seconds, peak_memory, gpu_utilisation, note,
                    created_at)
                SELECT 'w:' || w || ':' || to_char(t, 'YYYY-MM-DD"T"HH24:MI:SS+00:00'),
                    'charge', 'local', w, NULL,
                    (ARRAY[{ids}]::bigint[])[u % 5 + 1],
                    {base} + u,
                    CASE WHEN u % 5 = 0 THEN {gpu_pool} ELSE {ws_pool} END,
                    CASE WHEN u % 5 = 0 THEN {gpu_profile} ELSE {small_profile} END,
                    t, t + interval '1 hour',
                    CASE WHEN u % 5 = 0 THEN 8000 ELSE 2000 END,
                    CASE WHEN u % 5 = 0 THEN 68719476736 ELSE 8589934592 END,
                    CASE WHEN u % 5 = 0 THEN '{{"a100": 1}}'::json ELSE '{{}}'::json END,
                    CASE WHEN u % 5 = 0 THEN 1644000 ELSE 28000 END + (n % 7),
                    CASE WHEN u % 5 = 0 THEN 1644000 ELSE 28000 END + (n % 7),
                    (n % 3600)::float, NULL, NULL, '', t + interval '1 hour'
                FROM (
                    SELECT n, n % {n_users} AS u,
                        (n / {n_users}) / {hours} * 100000000
                            + (n / {n_users}) % {hours} / 24 * {n_users} + n % {n_users} AS w,
                        CAST(:first AS timestamptz)
                            + ((n / {n_users}) % {hours}) * interval '1 hour' AS t
                    FROM generate_series(0::bigint, {per_user * n_users - 1}) AS n
                ) AS g
                """
            ),
            {"first": first},
        )
        filled_ledger = time.perf_counter() - t0
        for _, definition in indexes:
            await c.execute(text(definition))
        for name, definition in constraints:
            await c.execute(
                text(f'ALTER TABLE ledger_entries ADD CONSTRAINT "{name}" {definition}')
            )
        indexed = time.perf_counter() - t0 - filled_ledger
        await c.execute(
            text(
                """
                INSERT INTO usage_days (day, account_id, user_id, pool_id, profile_id, amount,
                    cpu_seconds, memory_gib_seconds, gpu_seconds, share_seconds,
                    used_cpu_seconds)
                SELECT (start AT TIME ZONE 'UTC')::date, account_id, user_id,
                    coalesce(pool_id, 0), coalesce(profile_id, 0), sum(amount),
                    sum(millicpus / 1000.0 * 3600), sum(memory / 1073741824.0 * 3600),
                    sum(CASE WHEN gpus::text = '{}' THEN 0 ELSE 3600 END), 0,
                    sum(used_cpu_seconds)
                FROM ledger_entries
                GROUP BY 1, 2, 3, 4, 5
                """
            )
        )
        await c.execute(text("VACUUM ANALYZE"))
        sizes = {
            table: {
                "rows": (await c.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one(),
                "bytes": (
                    await c.execute(text("SELECT pg_total_relation_size(:t)"), {"t": table})
                ).scalar_one(),
            }
            for table in ("ledger_entries", "usage_days")
        }
        ledger_sum = (await c.execute(text("SELECT sum(amount) FROM ledger_entries"))).scalar_one()
        usage_sum = (await c.execute(text("SELECT sum(amount) FROM usage_days"))).scalar_one()
        assert ledger_sum == usage_sum, (ledger_sum, usage_sum)
        # One user's entries (the generator treats every user alike): per workload and day.
        workload_days = (
            await c.execute(
                text(
                    "SELECT count(*) FROM (SELECT DISTINCT workload_id, "
                    "(start AT TIME ZONE 'UTC')::date FROM ledger_entries "
                    "WHERE user_id = :u) AS d"
                ),
                {"u": base},
            )
        ).scalar_one()
        one_user = (
            await c.execute(
                text("SELECT count(*) FROM ledger_entries WHERE user_id = :u"), {"u": base}
            )
        ).scalar_one()
        t = time.perf_counter()
        (
            await c.execute(
                text(
                    "SELECT user_id, sum(amount) FROM ledger_entries WHERE start >= :f "
                    "GROUP BY user_id"
                ),
                {"f": first},
            )
        ).all()
        from_ledger = time.perf_counter() - t
    await engine.dispose()
    return {
        "fill_seconds": round(time.perf_counter() - t0, 1),
        "ledger_fill_seconds": round(filled_ledger, 1),
        "first_day": first.date().isoformat(),
        "last_day": last_day.isoformat(),
        "tables": sizes,
        "ledger_sum_micros": int(ledger_sum),
        "ledger_entries_per_workload_day": round(one_user / workload_days, 2),
        "index_and_constraint_build_seconds": round(indexed, 1),
        "whole_year_by_user_from_the_ledger_ms": round(from_ledger * 1000, 1),
    }


@contextmanager
def serve(database_url: str) -> Iterator[tuple[str, str]]:
    """`allot serve --no-controller` on the database (nothing runs: only reports are asked
    for); yields (API base URL, admin token). Waits up to 3 minutes for it on a busy machine."""
    data = Path(tempfile.mkdtemp(prefix="allotment-bench-data.", dir="/tmp"))
    port = free_port()
    env = clean_env(ALLOTMENT_DATA_DIR=str(data), ALLOTMENT_DATABASE_URL=database_url)
    with open(data / "serve.log", "w") as log:
        proc = subprocess.Popen(
            [*ALLOT, "serve", "-c", "examples/department.yaml", "--port", str(port)]
            + ["--log-level", "warning", "--no-controller"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    api = f"http://127.0.0.1:{port}/services/allotment/api/"
    try:
        if not wait_healthy(api + "health", 180):
            raise RuntimeError("allot serve did not start:\n" + (data / "serve.log").read_text())
        yield api, (data / "admin-token").read_text().strip()
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(data, ignore_errors=True)


def _percentiles(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {
        "p50_ms": round(statistics.median(s), 1),
        "p90_ms": round(s[max(int(0.9 * len(s)) - 1, 0)], 1),
        "max_ms": round(s[-1], 1),
    }


QUERIES = {
    "whole year by user": {"since": "365d", "by": "user"},
    "whole year by account": {"since": "365d", "by": "account"},
    "whole year by day": {"since": "365d", "by": "day"},
    "whole year by week": {"since": "365d", "by": "week"},
    "whole year by pool": {"since": "365d", "by": "pool"},
    "a subtree's year by user": {"since": "365d", "by": "user", "account": "physics/lab-a"},
    "one user's year by day": {"since": "365d", "by": "day", "user": "u0042"},
    "last 30 days by user": {"since": "30d", "by": "user"},
}


def measure_api(api: str, token: str, requests: int, ledger_sum: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with httpx.Client(base_url=api, headers={"Authorization": f"token {token}"}, timeout=120) as c:
        for label, params in QUERIES.items():
            times = []
            for _ in range(requests):
                t = time.perf_counter()
                r = c.get("usage", params={**params, "limit": 10_000})
                times.append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200, r.text
            body = r.json()
            if params.get("since") == "365d" and "account" not in params and "user" not in params:
                assert body["total"]["cost_micros"] == ledger_sum, (label, body["total"])
            out[label] = {**_percentiles(times), "rows": len(body["items"])}
            print(f"  {label:28} {out[label]}", flush=True)
    return out


def measure_cli(api: str, token: str, runs: int) -> dict[str, Any]:
    env = clean_env(
        ALLOTMENT_URL=api.removesuffix("api/"), ALLOTMENT_TOKEN=token, ALLOTMENT_SEARCH_PATH=""
    )
    out: dict[str, Any] = {}
    for label, args in {
        "allot usage --since 365d --by user": ["--since", "365d", "--by", "user"],
        "allot usage --since 365d --by user --format csv": [
            "--since", "365d", "--by", "user", "--format", "csv",
        ],
        "allot usage --since 30d (table)": ["--since", "30d"],
        "allot version (Python's start alone)": None,
    }.items():  # fmt: skip
        command = [*ALLOT, "version"] if args is None else [*ALLOT, "usage", *args]
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
            times.append((time.perf_counter() - t) * 1000)
            assert done.returncode == 0, done.stderr
        out[label] = _percentiles(times)
        print(f"  {label:48} {out[label]}", flush=True)
    return out


def run(entries: int, requests: int) -> dict[str, Any]:
    today = datetime.now(UTC).date()
    with postgres() as url:
        with serve(url) as (api, token):
            print(f"filling {entries:,} ledger entries…", flush=True)
            data = asyncio.run(fill(url, entries, today))
            print(json.dumps(data, indent=2), flush=True)
            print("GET /usage", flush=True)
            api_times = measure_api(api, token, requests, data["ledger_sum_micros"])
            print("allot usage", flush=True)
            cli_times = measure_cli(api, token, max(requests // 2, 3))
    return {
        "benchmark": "allot usage over a year of 1,000 users (10 million ledger entries), "
        "PostgreSQL",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit(),
        "machine": machine(),
        "postgres": "fsync off (reads measured)",
        "entries": entries,
        "users": USERS,
        "requests_per_query": requests,
        "target": {"api_ms": 1000, "cli_ms": 1000},
        "rows_written_per_running_workload_per_day": {
            "ledger_entries": "24 at the default accounting.entry of 1h (one per hour of the "
            "clock), and one more at its end",
            "usage_days": "at most 1 per day for each (account, user, pool, profile) "
            "it charges, shared by all their workloads of that day",
            "open_charges": "1 per workload, updated each accounting.interval",
        },
        "data": data,
        "api": api_times,
        "cli": cli_times,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=10_000_000)
    ap.add_argument("--requests", type=int, default=10)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/usage_report.json"))
    args = ap.parse_args()
    result = run(args.entries, args.requests)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    os.sync()


if __name__ == "__main__":
    main()
