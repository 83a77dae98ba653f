"""`allot backup` and `allot restore`, for real: the CLI as an administrator runs it, on SQLite
(the online backup API) and PostgreSQL (``pg_dump``/``pg_restore`` from Debian's packages).

Every table comes back as it was (a table added later is covered without a change), the
database replaced is kept aside, and nothing runs twice: a workload that ran after the backup
was taken keeps its true outcome, one submitted after it is gone but its id is never given
again, and one still running is adopted again, same process.
"""

from __future__ import annotations

import json
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session

from allotment.controller.lock import take_service
from allotment.db.backup import pg_program, summarise
from allotment.db.engine import Database
from allotment.db.tables import (
    WORKLOADS,
    Account,
    Base,
    BudgetAlert,
    BudgetRow,
    DaskCluster,
    Heartbeat,
    LedgerEntry,
    Notification,
    OpenCharge,
    Profile,
    UsageDay,
    User,
)
from allotment.domain.workloads import WorkloadState
from tests.backends.conftest import ROOT
from tests.support.hub import Hub, free_port
from tests.support.jobs import JobService, ended, job_service, policy_file, wait_for, workload
from tests.support.process import ROOT as REPO
from tests.support.process import allot_serve, clean_env
from tests.support.service import running_service

S = WorkloadState


def allot(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The real `allot`, as the administrator runs it beside the service."""
    return subprocess.run(
        [sys.executable, "-m", "allotment", *args],
        env={**env, "COLUMNS": "200"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _rows(session: Session) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table of the schema, in key order."""
    return {
        t.name: [tuple(r) for r in session.execute(select(t).order_by(*t.primary_key.columns))]
        for t in Base.metadata.sorted_tables
    }


def _workload(session: Session, status: S, **values: Any) -> int:
    now = datetime.now(UTC)
    user = session.scalars(select(User.id).order_by(User.id)).first()
    if user is None:
        user = session.scalar(
            User.__table__.insert().values(name="bob", created_at=now).returning(User.id)  # type: ignore[attr-defined]
        )
    account = session.scalars(select(Account.id).order_by(Account.id)).first()
    row = {
        "kind": "job",
        "name": "",
        "user_id": user,
        "account_id": account,
        "millicpus": 1000,
        "memory": 2**28,
        "gpus": {},
        "target": int(S.RUNNING),
        "status": int(status),
        "reason": "",
        "command": ["true"],
        "created_at": now,
        "updated_at": now,
        **values,
    }
    return int(
        session.execute(WORKLOADS.insert().values(**row).returning(WORKLOADS.c.id)).scalar_one()
    )


def _money(session: Session) -> None:
    """A row in each table of the ledger, budgets, alerts and the outbox (issue 14)."""
    now = datetime.now(UTC)
    user = session.scalars(select(User.id).order_by(User.id)).first()
    account = session.scalars(select(Account.id).order_by(Account.id)).first()
    assert user is not None and account is not None
    wid = session.scalars(select(WORKLOADS.c.id).where(WORKLOADS.c.status == int(S.RUNNING))).one()
    resources = {"millicpus": 1000, "memory": 2**28, "gpus": {}, "rate": 1_000_000}
    ids = {"account_id": account, "user_id": user}
    session.add(
        LedgerEntry(
            key=f"w:{wid}:backup",
            kind="charge",
            source="local",
            workload_id=wid,
            start=now,
            end=now,
            amount=7,
            note="",
            created_at=now,
            **ids,
            **resources,
        )
    )
    session.add(
        OpenCharge(
            workload_id=wid,
            source="local",
            gpu_count=0,
            share=0.1,
            span_start=now,
            charged_through=now,
            start_ms=0,
            through_ms=0,
            amount=3,
            closed=False,
            **ids,
            **resources,
        )
    )
    session.add(UsageDay(day=now.date(), pool_id=0, profile_id=0, amount=10, **ids))
    budget = BudgetRow(
        account_id=account,
        spec={"amount": 5.0, "period": "month"},
        origin="api",
        updated_at=now,
        updated_by="backup-test",
    )
    session.add(budget)
    session.flush()
    session.add(
        BudgetAlert(
            budget_id=budget.id,
            period_start=now,
            threshold=0.5,
            spent=10,
            raised_at=now,
            message="half spent",
        )
    )
    session.add(
        Notification(
            key="backup-test",
            channel="email",
            target="bob@example.org",
            payload={"subject": "half spent"},
            next_attempt=now,
            created_at=now,
        )
    )
    session.flush()


def _dask_cluster(session: Session) -> None:
    """A Dask cluster (issue 16) whose scheduler is the pending workload."""
    now = datetime.now(UTC)
    w = session.execute(
        select(WORKLOADS.c.id, WORKLOADS.c.user_id, WORKLOADS.c.account_id).where(
            WORKLOADS.c.status == int(S.PENDING)
        )
    ).one()
    session.add(
        DaskCluster(
            name="era5",
            user_id=w.user_id,
            account_id=w.account_id,
            profile_id=session.scalars(select(Profile.id).order_by(Profile.id)).first(),
            state=0,
            worker={"cpus": 1.0, "memory": 2**30, "gpus": 0, "threads": 1},
            python="/usr/bin/python3",
            tls_cert="-----BEGIN CERTIFICATE-----",
            tls_key="-----BEGIN PRIVATE KEY-----",
            token_sha256="0" * 64,
            scheduler_id=w.id,
            created_at=now,
            updated_at=now,
        )
    )
    session.flush()


@pytest.fixture
async def installation(
    database_url: str, tmp_path: Path
) -> AsyncIterator[tuple[dict[str, str], Database]]:
    """A database with a policy applied (accounts, users, memberships, pools, profiles, policy
    versions, an admin token) and workloads in every state; the environment `allot` finds it
    from. Databases a restore set aside are dropped afterwards."""
    data = tmp_path / "data"
    async with running_service(database_url, data):
        pass
    db = Database(database_url)

    def fill(session: Session) -> None:
        for status in S:
            placement = {"run": "/nonexistent"} if status >= S.STARTING else None
            _workload(session, status, placement=placement)
        if not session.scalar(select(Heartbeat.name).limit(1)):
            session.add(Heartbeat(name="scheduling", at=datetime.now(UTC), stale_after=30.0))
            session.flush()
        _money(session)
        _dask_cluster(session)

    await db.run_write(fill)
    env = clean_env(ALLOTMENT_DATA_DIR=str(data), ALLOTMENT_DATABASE_URL=database_url)
    policy = tmp_path / "policy.yaml"
    policy.write_text((REPO / "examples/department.yaml").read_text())
    env["ALLOTMENT_CONFIG"] = str(policy)
    yield env, db
    await db.dispose()
    u = make_url(database_url)
    if u.get_backend_name() == "postgresql":
        admin = create_async_engine(u.set(database="postgres"), isolation_level="AUTOCOMMIT")
        async with admin.connect() as conn:
            names = await conn.execute(
                text("SELECT datname FROM pg_database WHERE datname LIKE :n"),
                {"n": f"{u.database}_before_restore_%"},
            )
            for (name,) in names.all():
                await conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        await admin.dispose()


@pytest.mark.skipif(not pg_program("pg_dump"), reason="needs pg_dump (postgresql-client)")
async def test_every_table_round_trips_and_what_came_after_is_reconciled(
    installation: tuple[dict[str, str], Database], tmp_path: Path
) -> None:
    env, db = installation
    before = await db.run_read(_rows)
    # A table with no row would prove nothing: give it one here when adding it to the schema.
    assert all(before.values()), [t for t, rows in before.items() if not rows]
    pending = next(r[0] for r in before["workloads"] if r[WORKLOADS.c.keys().index("status")] == 0)

    done = allot("backup", "-o", str(tmp_path / "copy"), env=env)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE((tmp_path / "copy").stat().st_mode) == 0o600
    assert "8 workloads" not in done.stdout and "7 workloads" in done.stdout, done.stdout

    # After the backup: the pending workload runs and completes, another is submitted.
    def later(session: Session) -> int:
        session.execute(
            WORKLOADS.update()
            .where(WORKLOADS.c.id == pending)
            .values(
                status=int(S.STOPPED),
                target=int(S.STOPPED),
                exit_code=0,
                reason="completed (exit status 0)",
                placement={"run": "/gone"},
            )
        )
        return _workload(session, S.PENDING)

    submitted = await db.run_write(later)
    await db.dispose()

    # Something that is not a backup is refused before anything is set aside.
    (tmp_path / "bogus").write_text("not a backup\n" * 100)
    refused = allot("restore", str(tmp_path / "bogus"), env=env)
    assert refused.returncode == 1, refused.stdout
    assert "not a SQLite database" in refused.stderr or "not a pg_dump archive" in refused.stderr
    assert await db.run_read(lambda s: s.execute(select(WORKLOADS.c.id)).all())
    await db.dispose()  # its connections would go on reading the file set aside

    done = allot("restore", str(tmp_path / "copy"), env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "kept as" in done.stdout

    after = await db.run_read(_rows)
    changed = {t for t in before if after[t] != before[t]}
    assert changed == {"workloads"}
    ids = [r[0] for r in after["workloads"]]
    assert submitted not in ids and ids == [r[0] for r in before["workloads"]]
    row = await db.run_read(
        lambda s: s.execute(select(WORKLOADS).where(WORKLOADS.c.id == pending)).one()
    )
    assert (row.status, row.exit_code) == (int(S.STOPPED), 0)
    assert row.reason == "ran after the backup was taken; completed (exit status 0)"
    # The id of the workload submitted after the backup is never given again.
    assert await db.run_write(lambda s: _workload(s, S.PENDING)) > submitted
    summary = await db.run_read(lambda s: summarise(s.connection()))
    assert summary.policy_versions == len(before["policy_versions"])


def _submit(s: JobService, token: str, command: str, shared: Path, cpus: float = 1) -> int:
    body = {
        "profile": "small",
        "command": ["sh", "-c", command],
        "workdir": str(shared),
        "cpus": cpus,
    }
    with s.client(token) as c:
        r = c.post("workloads", json=body)
        assert r.status_code == 201, r.text
        return int(r.json()["id"])


def _backed_up_ids(path: Path) -> set[int]:
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("SELECT id FROM workloads")}


def _pid(data: Path, wid: int) -> int:
    """The launcher's pid the service's database records for ``wid``."""
    with sqlite3.connect(data / "allotment.sqlite") as conn:
        (placement,) = conn.execute(
            "SELECT placement FROM workloads WHERE id = ?", (wid,)
        ).fetchone()
    return int(json.loads(placement)["pid"])


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


@pytest.mark.jupyterhub
@pytest.mark.skipif(not ROOT, reason="runs workloads as other POSIX accounts: needs root")
def test_after_a_restore_nothing_runs_twice_and_no_id_is_given_again(
    tmp_path: Path, hub: Hub, shared: Path
) -> None:
    alice, data, port = hub.token("alice"), tmp_path / "data", free_port()
    policy = policy_file(tmp_path)
    env = clean_env(ALLOTMENT_DATA_DIR=str(data), ALLOTMENT_CONFIG=str(policy))
    go, marks, copy = shared / "go", shared / "marks", tmp_path / "copy.sqlite"
    record = f"echo $ALLOT_WORKLOAD_ID >> {marks}"
    with job_service(port, data, None, hub.api_url, policy) as s:
        # The box has 2 CPUs: these two fill it, so the third waits.
        sleeper = _submit(s, alice, "sleep 300", shared)
        waiter = _submit(s, alice, f"while [ ! -e {go} ]; do sleep 0.1; done; exit 3", shared)
        for wid in (sleeper, waiter):
            wait_for(lambda w=wid: workload(s, alice, w)["status"] == "running", what="running")
        queued = _submit(s, alice, record, shared)
        # The backup is taken while submissions keep coming.
        accepted: list[int] = []
        stop = threading.Event()

        def submit() -> None:
            while not stop.is_set() or len(accepted) < 10:
                accepted.append(_submit(s, alice, record, shared, cpus=0.1))

        submitter = threading.Thread(target=submit)
        submitter.start()
        wait_for(lambda: len(accepted) >= 5, what="submissions under way")
        done = allot("backup", "-o", str(copy), env=env)
        stop.set()
        submitter.join()
        accepted.append(_submit(s, alice, record, shared, cpus=0.1))  # surely after it
        assert done.returncode == 0, done.stderr
        assert stat.S_IMODE(copy.stat().st_mode) == 0o600
        in_backup = _backed_up_ids(copy)
        assert {sleeper, waiter, queued} <= in_backup
        assert accepted[0] in in_backup and accepted[-1] not in in_backup
        assert workload(s, alice, queued)["status"] == "pending"
        # A restore while the service runs is refused, saying what to stop.
        refused = allot("restore", str(copy), env=env)
        assert refused.returncode == 1 and "stop it" in refused.stderr, refused.stderr
        # After the backup: the waiter ends (exit 3), the queued job and the others run.
        pid = _pid(data, sleeper)
        go.touch()
        for wid in (waiter, queued, *accepted):
            ended(s, alice, wid)
        assert sorted(map(int, _lines(marks))) == sorted([queued, *accepted])
    # The service is stopped; the sleeper still runs, detached from it.
    restored = allot("restore", str(copy), env=env)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert list(data.glob("allotment.sqlite.before-restore-*"))
    with job_service(port, data, None, hub.api_url, policy) as s:
        assert workload(s, alice, sleeper)["status"] == "running"
        assert _pid(data, sleeper) == pid  # the same process, adopted again
        w = ended(s, alice, waiter)
        assert (w["status"], w["exit_code"]) == ("failed", 3)
        assert w["reason"] == "ended after the backup was taken; exited with status 3"
        w = ended(s, alice, queued)
        assert (w["status"], w["exit_code"]) == ("stopped", 0)
        assert w["reason"] == "ran after the backup was taken; completed (exit status 0)"
        with s.client(alice) as c:
            for wid in accepted:
                if wid not in in_backup:  # submitted after the backup: gone
                    assert c.get(f"workloads/{wid}").status_code == 404
        # New workloads never take the id of one submitted after the backup.
        new = _submit(s, alice, record, shared, cpus=0.1)
        assert new > max(accepted)
        assert ended(s, alice, new)["status"] == "stopped"
        # Each ran once: the ones that ran after the backup were not run again.
        assert sorted(map(int, _lines(marks))) == sorted([queued, *accepted, new])
        assert workload(s, alice, sleeper)["status"] == "running"
        with s.client(alice) as c:
            assert c.post(f"workloads/{sleeper}/cancel").status_code == 200
        assert ended(s, alice, sleeper)["reason"] == "cancelled by alice"


def test_a_restore_is_refused_while_any_service_runs_and_none_starts_during_one(
    tmp_path: Path,
) -> None:
    """An `allot serve --no-controller` (API only) holds no controller lock, yet a restore
    beside it would lose what it acknowledges into the database set aside; and a service
    started during a restore would migrate the database being replaced."""
    data, port = tmp_path / "data", free_port()
    env = clean_env(ALLOTMENT_DATA_DIR=str(data))
    copy = tmp_path / "copy.sqlite"
    with allot_serve(port, env, "--no-controller"):
        done = allot("backup", "-o", str(copy), env=env)
        assert done.returncode == 0, done.stderr
        refused = allot("restore", str(copy), env=env)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "a service of this installation is running" in refused.stderr
        assert "service.lock" in refused.stderr and "stop it" in refused.stderr
    assert not list(data.glob("allotment.sqlite.before-restore-*"))  # nothing was touched
    restoring = take_service(data)  # as `allot restore` holds it while it works
    assert restoring is not None
    try:
        started = subprocess.run(
            [sys.executable, "-m", "allotment", "serve", "--port", str(port)],
            env={**env, "COLUMNS": "200"},
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        restoring.close()
    assert started.returncode == 1, started.stdout + started.stderr
    assert "a restore of this installation's database is under way" in started.stderr
    restored = allot("restore", str(copy), env=env)
    assert restored.returncode == 0, restored.stdout + restored.stderr
