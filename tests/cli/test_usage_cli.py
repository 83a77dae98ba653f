"""`allot usage` through a real `allot serve` over HTTP: the table, CSV and JSON show the
ledger's sum to the cent, and a wrong period is explained with exit code 1."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from allotment.db.tables import Account, LedgerEntry, Pool, Profile, UsageDay, User
from tests.cli.test_cli import allot
from tests.support.hub import free_port
from tests.support.process import allot_serve, clean_env

#: (user, account, day of March 2026, charge in micros, CPU cores for one hour)
CHARGES = [
    ("bob", "physics/lab-a/proj-x", 2, 1_234_567, 2),
    ("bob", "physics/lab-a", 2, 5_000_005, 4),
    ("carol", "physics/lab-a", 9, 333_333, 1),
    ("erin", "physics/lab-b", 16, 10_000_000_000, 8),
    ("erin", "physics/lab-b", 31, 4, 1),
]
TOTAL = sum(c[3] for c in CHARGES)


def _seed(database: Path) -> None:
    """The ledger entries and the daily totals the meter would have written."""
    engine = create_engine(f"sqlite:///{database}")
    with Session(engine) as s, s.begin():
        accounts = {p: i for p, i in s.execute(select(Account.path, Account.id))}
        users = {n: i for n, i in s.execute(select(User.name, User.id))}
        pool = s.execute(select(Pool.id).where(Pool.name == "workstation")).scalar_one()
        profile = s.execute(select(Profile.id).where(Profile.name == "small")).scalar_one()
        for n, (user, account, day, amount, cpus) in enumerate(CHARGES):
            start = datetime(2026, 3, day, 10, tzinfo=UTC)
            ids = dict(account_id=accounts[account], user_id=users[user])
            s.add(
                LedgerEntry(
                    key=f"w:{n}:{start.isoformat()}",
                    kind="charge",
                    source="local",
                    workload_id=n,
                    pool_id=pool,
                    profile_id=profile,
                    start=start,
                    end=start + timedelta(hours=1),
                    millicpus=cpus * 1000,
                    memory=2**30,
                    gpus={},
                    rate=amount,
                    amount=amount,
                    used_cpu_seconds=900.0 * cpus,
                    note="",
                    created_at=start,
                    **ids,
                )  # fmt: skip
            )
            s.add(
                UsageDay(
                    day=date(2026, 3, day),
                    pool_id=pool,
                    profile_id=profile,
                    amount=amount,
                    cpu_seconds=3600.0 * cpus,
                    memory_gib_seconds=3600.0,
                    gpu_seconds=0.0,
                    share_seconds=0.0,
                    used_cpu_seconds=900.0 * cpus,
                    **ids,
                )  # fmt: skip
            )
    engine.dispose()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    data = tmp_path_factory.mktemp("usage")
    port = free_port()
    with allot_serve(port, clean_env(ALLOTMENT_DATA_DIR=str(data)), "--no-controller"):
        _seed(data / "allotment.sqlite")
        yield {
            "ALLOTMENT_URL": f"http://127.0.0.1:{port}/services/allotment/",
            "ALLOTMENT_DATA_DIR": str(data),
        }


def test_json_and_csv_totals_are_the_ledgers_to_the_micro(served: dict[str, str]) -> None:
    r = allot("usage", "--period", "2026-03", "--by", "user", "--format", "json", env=served)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["total"]["cost_micros"] == TOTAL
    assert {i["key"]: i["cost_micros"] for i in report["items"]} == {
        "bob": 1_234_567 + 5_000_005,
        "carol": 333_333,
        "erin": 10_000_000_004,
    }
    r = allot("usage", "--period", "2026-03", "--by", "week", "-f", "csv", env=served)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [row["week"] for row in rows] == [
        "2026-W10", "2026-W11", "2026-W12", "2026-W14", "total",
    ]  # fmt: skip
    assert rows[-1]["cost_micros"] == str(TOTAL)
    assert Decimal(rows[-1]["cost"]) == Decimal(TOTAL) / 1_000_000  # exact, not a float
    assert sum(Decimal(row["cost"]) for row in rows[:-1]) == Decimal(rows[-1]["cost"])
    assert float(rows[-1]["efficiency"]) == 0.25


def test_the_table_shows_the_currency_with_two_decimals(served: dict[str, str]) -> None:
    r = allot("usage", "--period", "2026-Q1", "-A", "lab-a", "--by", "account", env=served)
    assert r.returncode == 0, r.stderr
    assert "physics/lab-a/proj-x" in r.stdout and "1.23" in r.stdout
    assert "5.33" in r.stdout  # lab-a's own: 5.000005 + 0.333333
    assert "6.57" in r.stdout and "cost (EUR)" in r.stdout  # the total
    assert "2026-01-01 to 2026-03-31 (UTC)" in r.stdout
    r = allot("usage", "--period", "2026-03", "--by", "account", env=served)
    assert "10,000.00" in r.stdout and "10,006.57" in r.stdout  # lab-b; the total


def test_a_wrong_period_or_account_is_explained(served: dict[str, str]) -> None:
    r = allot("usage", "--period", "2026-13", env=served)
    assert r.returncode == 1
    assert "there is no month 13" in r.stderr and "2026-Q4" in r.stderr
    r = allot("usage", "--since", "30d", "--period", "2026", env=served)
    assert r.returncode == 1 and "not both" in r.stderr
    r = allot("usage", "-A", "lab-z", env=served)
    assert r.returncode == 1 and "no account 'lab-z'" in r.stderr
    r = allot("usage", "--period", "2025", env=served)
    assert r.returncode == 0 and "no usage from 2025-01-01 to 2025-12-31" in r.stdout
