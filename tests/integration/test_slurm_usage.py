"""The usage import against a real Slurm (``slurm_cluster``: three nodes, accounting on): jobs a
researcher submits with plain ``sbatch`` become charges of her account, exactly once; jobs an
Allotment installation submitted, and jobs of users the hub does not know, never do. On SQLite,
and on PostgreSQL when ``ALLOTMENT_TEST_POSTGRES`` names a server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pwd
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from allotment.backends.local.posix import mark, unix_name
from allotment.backends.slurm.runner import SlurmRunner, SlurmUnavailable
from allotment.clock import SystemClock
from allotment.config import parse_policy
from allotment.controller.slurm_usage import IMPORT, SlurmUsageImport
from allotment.db.engine import Database
from allotment.db.ledger import external_marks, totals
from allotment.db.policy_sync import apply_policy
from allotment.db.tables import Account, LedgerEntry, UsageDay, User
from allotment.domain.ledger import charge, span_start
from tests.support.slurm import SlurmCluster

pytestmark = pytest.mark.timeout(300)

POSTGRES = os.environ.get("ALLOTMENT_TEST_POSTGRES")
HUB = "ldimport"
#: One CPU costs 3.6 an hour: 1,000 millionths a second, so each job's amount reads as its
#: CPU-milliseconds.
POLICY = f"""
accounts:
  lab: {{members: [{HUB}]}}
pools:
  cluster:
    backend: slurm
    partition: main
    nodes:
      - {{name: n1, cpus: 2, memory: 4G}}
      - {{name: n2, cpus: 2, memory: 4G}}
      - {{name: n3, cpus: 2, memory: 4G}}
    rates: {{cpu: 3.6}}
profiles:
  small: {{pool: cluster, size: {{cpus: 1, memory: 1G}}}}
accounting: {{interval: 1m, entry: 1m}}
"""
RATE = 3_600_000  # one CPU, an hour
ENTRY = 60


def posix_user(name: str, gecos: str) -> str:
    """A POSIX account (made once; slurmctld must know it before its association)."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "-M", "-c", gecos, "-s", "/bin/sh", name], check=True)
    return name


@pytest.fixture(scope="module")
def researcher(slurm_cluster: SlurmCluster) -> str:
    """The hub user's POSIX account as Allotment makes it (marked for her), with an association
    to ``lab``'s Slurm account as the mirror gives it."""
    name = posix_user(unix_name(HUB), mark(HUB))
    slurm_cluster.add_association(name, "lab")
    return name


@pytest.fixture(scope="module")
def stranger(slurm_cluster: SlurmCluster) -> str:
    """Somebody with an association to ``lab`` whom the hub does not know."""
    name = posix_user("ldstranger", "someone")
    slurm_cluster.add_association(name, "lab")
    return name


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    cleanup = []
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'import.sqlite'}"
    else:
        if not POSTGRES:
            pytest.skip("set ALLOTMENT_TEST_POSTGRES (scripts/test does)")
        name = "t_" + uuid.uuid4().hex[:16]
        admin = create_async_engine(POSTGRES, isolation_level="AUTOCOMMIT")
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(POSTGRES).set(database=name).render_as_string(hide_password=False)
        cleanup.append((admin, name))
    database = Database(url)
    await database.upgrade()
    async with database.write() as s:
        await apply_policy(s, parse_policy(POLICY, environ={}), actor="test", now=datetime.now(UTC))
    yield database
    await database.dispose()
    for admin, name in cleanup:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        await admin.dispose()


def sbatch(cluster: SlurmCluster, user: str, workdir: Path, *args: str) -> int:
    """A job submitted the plain way, as ``user``, not through Allotment."""
    out = cluster.run(
        "sbatch", "--parsable", "-A", "lab", "-p", "main", "-c", "1", "--mem", "64M",
        "-D", str(workdir), "-o", "/dev/null", *args, user=user,
    )  # fmt: skip
    return int(out.strip().split(";")[0])


def sacct_times(cluster: SlurmCluster, job: int) -> tuple[str, datetime | None, datetime | None]:
    """(state, start, end) as accounting has them (epoch seconds: no time zone to guess)."""
    records = json.loads(cluster.run("sacct", "--json", "-X", "-j", str(job)))["jobs"]
    if not records:
        return "", None, None
    t = records[-1]["time"]

    def at(v: Any) -> datetime | None:
        return datetime.fromtimestamp(v, UTC) if v else None

    return str(records[-1]["state"]["current"]), at(t.get("start")), at(t.get("end"))


def wait_ended(cluster: SlurmCluster, jobs: Sequence[int], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = [sacct_times(cluster, j)[0] for j in jobs]
        if all(s and s not in ("PENDING", "RUNNING", "REQUEUED") for s in states):
            return
        time.sleep(0.5)
    raise TimeoutError(f"jobs {list(jobs)} still running: {states}")


def cost(start: datetime, end: datetime, rate: int = RATE) -> int:
    """[start, end) by the ledger's rules: one charge per span of the clock."""
    total, a = 0, start
    while a < end:
        b = min(span_start(a, ENTRY) + timedelta(seconds=ENTRY), end)
        total += charge(rate, int((b - a).total_seconds() * 1000))
        a = b
    return total


async def entries(db: Database, job: int | None = None) -> list[Any]:
    """The ledger's entries (of one Slurm job's), in time order."""
    async with db.read() as s:
        found = (await s.execute(select(LedgerEntry).order_by(LedgerEntry.start))).scalars()
        return [e for e in found if job is None or f":{job}:" in e.key]


async def ids(db: Database) -> tuple[int, int]:
    async with db.read() as s:
        account = (await s.execute(select(Account.id).where(Account.path == "lab"))).scalar_one()
        user = (await s.execute(select(User.id).where(User.name == HUB))).scalar_one()
    return account, user


async def consistent(db: Database) -> tuple[int, int, int]:
    sums = await db.run_read(totals)
    assert sums[0] == sums[1] + sums[2]
    return sums


def runner(cluster: SlurmCluster) -> SlurmRunner:
    return SlurmRunner(conf=str(cluster.conf))


async def test_direct_jobs_become_charges_exactly_once(
    db: Database, slurm_cluster: SlurmCluster, researcher: str, stranger: str, shared: Path
) -> None:
    began = time.monotonic()
    mine = [sbatch(slurm_cluster, researcher, shared, "--wrap", f"sleep {s}") for s in (2, 3)]
    two = sbatch(slurm_cluster, researcher, shared, "-c", "2", "--wrap", "sleep 2")
    ours = sbatch(slurm_cluster, researcher, shared, "-J", "allot.somesite.42", "--wrap", "sleep 1")
    theirs = sbatch(slurm_cluster, stranger, shared, "--wrap", "sleep 1")
    wait_ended(slurm_cluster, [*mine, two, ours, theirs])
    # Accounting may trail the end by a moment; the import reads it with a margin anyway.
    await asyncio.sleep(1)

    def importer() -> SlurmUsageImport:
        # Imports read back only as far as this test's jobs (the cluster is the session's:
        # other tests' jobs are of the same day and the same hour).
        back = timedelta(seconds=time.monotonic() - began)
        return SlurmUsageImport(
            db, SystemClock(), runner(slurm_cluster), lookback=back, margin=back
        )

    first = importer()
    done = await first.import_once()
    assert done.skipped.get("ours", 0) >= 1 and done.skipped.get("user", 0) >= 1

    account, user = await ids(db)
    expected: dict[int, int] = {}
    for job, cpus in [*((j, 1) for j in mine), (two, 2)]:
        _, start, end = sacct_times(slurm_cluster, job)
        assert start is not None and end is not None
        expected[job] = cost(start, end, RATE * cpus)
    found = await entries(db)
    by_job: dict[int, int] = {}
    for e in found:
        assert e.key.startswith(f"slurm:{slurm_cluster.cluster}:")
        assert (e.account_id, e.user_id, e.workload_id, e.source) == (account, user, None, "slurm")
        job = int(e.key.split(":")[2])
        by_job[job] = by_job.get(job, 0) + e.amount
    # The researcher's three plain jobs, each at its rate × its duration, to the millionth;
    # not the installation's job, not the stranger's.
    assert {j: by_job.get(j) for j in expected} == expected
    assert ours not in by_job and theirs not in by_job
    async with db.read() as s:
        days = (await s.execute(select(UsageDay))).scalars().all()
    assert sum(d.amount for d in days) == sum(e.amount for e in found)
    assert {(d.account_id, d.user_id) for d in days} == {(account, user)}
    sums = await consistent(db)

    # Again, and after a restart (a new importer, same watermark): nothing new.
    assert (await first.import_once()).charged == 0
    assert (await importer().import_once()).charged == 0
    # Even one that has lost its watermark and reads everything again.
    async with db.write() as s:
        await s.execute(text("DELETE FROM heartbeats WHERE name = :n"), {"n": IMPORT})
    redo = await importer().import_once()
    assert redo.planned >= len(expected) and redo.charged == 0
    assert await consistent(db) == sums
    assert len(await entries(db)) == len(found)


async def test_a_running_job_is_charged_span_by_span(
    db: Database, slurm_cluster: SlurmCluster, researcher: str, shared: Path
) -> None:
    """``accounting.entry`` is a minute here: a job of 75 s is charged its first whole minute
    while it runs, nothing of the minute not over yet, and the rest once it has ended."""
    job = sbatch(slurm_cluster, researcher, shared, "--wrap", "sleep 75")
    deadline = time.monotonic() + 60
    while (start := sacct_times(slurm_cluster, job)[1]) is None:
        assert time.monotonic() < deadline, "the job did not start"
        await asyncio.sleep(0.5)
    boundary = span_start(start, ENTRY) + timedelta(seconds=ENTRY)
    await asyncio.sleep(max((boundary - datetime.now(UTC)).total_seconds(), 0) + 2)
    importer = SlurmUsageImport(db, SystemClock(), runner(slurm_cluster))
    await importer.import_once()
    assert sacct_times(slurm_cluster, job)[2] is None, "it should still be running"
    # (The cluster is the session's: other tests' jobs of the day are imported too.)
    found = await entries(db, job)
    assert [(e.start, e.end) for e in found] == [(start, boundary)]
    assert found[0].amount == cost(start, boundary)
    wait_ended(slurm_cluster, [job])
    await importer.import_once()
    _, start, end = sacct_times(slurm_cluster, job)
    assert start is not None and end is not None
    found = await entries(db, job)
    assert found[0].end == boundary and found[-1].end == end
    assert all(a.end == b.start for a, b in zip(found, found[1:], strict=False))
    assert sum(e.amount for e in found) == cost(start, end)
    await consistent(db)


class Unreachable:
    """Slurm's runner while slurmdbd and slurmctld do not answer."""

    calls = 0

    async def run(self, argv: Sequence[str]) -> Any:
        self.calls += 1
        raise SlurmUnavailable("Slurm does not answer (sacct: connection refused)")


async def test_slurm_down_skips_the_round_says_so_once_and_keeps_the_watermark(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    importer = SlurmUsageImport(db, SystemClock(), Unreachable())
    caplog.set_level(logging.INFO, "allotment.controller")
    for _ in range(3):
        done = await importer.import_once()
        assert done.charged == 0 and done.jobs == 0
    said = [r.getMessage() for r in caplog.records if "sacct failed" in r.getMessage()]
    assert len(said) == 1 and "connection refused" in said[0]
    assert await db.run_read(lambda s: external_marks(s, IMPORT)) is None
