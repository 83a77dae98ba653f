"""The pure parts of backup and restore: what a restore writes over each unfinished workload,
how a libpq program is given a password, and the SQLite copy's refusals."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from allotment.controller.restore import COPIED, IDENTITY, decide
from allotment.db.backup import (
    BackupError,
    Summary,
    _libpq_environment,
    _passfile_line,
    aside_name,
    backup_sqlite,
    check_sqlite,
    sqlite_file,
)
from allotment.domain.workloads import WorkloadState

S = WorkloadState


def row(status: S, placement: dict[str, Any] | None = None, **values: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict.fromkeys((*IDENTITY, *COPIED))
    base.update(id=7, user_id=1, created_at="t0", status=int(status), placement=placement)
    base.update(values)
    return base


RUN = {"run": "/srv/local/run/w7.1", "pid": 100}


def test_pending_in_the_backup_that_ran_since_takes_its_outcome() -> None:
    earlier = row(S.STOPPED, RUN, exit_code=0, reason="completed (exit status 0)")
    kind, values = decide(row(S.PENDING), earlier, on_backend=False) or ("", {})
    assert kind == "updated"
    assert values["status"] == int(S.STOPPED) and values["exit_code"] == 0
    assert values["placement"] == RUN
    assert values["reason"] == "ran after the backup was taken; completed (exit status 0)"


def test_running_in_the_backup_that_ended_since_says_it_ended() -> None:
    earlier = row(S.FAILED, RUN, exit_code=3, reason="exited with status 3")
    kind, values = decide(row(S.RUNNING, RUN), earlier, on_backend=True) or ("", {})
    assert kind == "updated"
    assert values["reason"] == "ended after the backup was taken; exited with status 3"


def test_still_running_takes_its_placement_and_reason_as_they_are() -> None:
    earlier = row(S.RUNNING, RUN, reason="running on localhost")
    kind, values = decide(row(S.PENDING), earlier, on_backend=True) or ("", {})
    assert (kind, values["status"], values["placement"]) == ("updated", int(S.RUNNING), RUN)
    assert values["reason"] == "running on localhost"


def test_nothing_happened_since_nothing_is_written() -> None:
    assert decide(row(S.RUNNING, RUN), row(S.RUNNING, RUN), on_backend=True) is None
    assert decide(row(S.PENDING), None, on_backend=False) is None  # it runs, once


def test_running_in_the_backup_and_still_on_its_backend_is_left_to_the_controller() -> None:
    assert decide(row(S.RUNNING, RUN), None, on_backend=True) is None


def test_what_no_database_recorded_is_not_run_again_and_says_why() -> None:
    kind, values = decide(row(S.PENDING), None, on_backend=True) or ("", {})
    assert kind == "unknown"
    assert values["reason"].startswith("started after the backup was taken, and its outcome")
    assert values["reason"].endswith("not run again")
    kind, values = decide(row(S.RUNNING, RUN), None, on_backend=False) or ("", {})
    assert kind == "unknown" and values["reason"].startswith("ended after the backup")


def test_the_password_goes_to_a_private_file_never_the_environment(tmp_path: Path) -> None:
    url = "postgresql+asyncpg://allot:s3cr:t\\x@db.example:5433/allotment"
    with _libpq_environment(url, tmp_path) as env:
        assert "s3cr" not in " ".join(env.values())
        assert (env["PGHOST"], env["PGPORT"], env["PGUSER"]) == ("db.example", "5433", "allot")
        assert env["PGDATABASE"] == "allotment"
        passfile = Path(env["PGPASSFILE"])
        assert stat.S_IMODE(passfile.stat().st_mode) == 0o600
        assert passfile.read_text() == "db.example:5433:allotment:allot:s3cr\\:t\\\\x\n"
    assert not passfile.exists()
    with _libpq_environment("postgresql://allot@db/allotment", tmp_path) as env:
        assert "PGPASSFILE" not in env


def test_passfile_fields_escape_colons_and_backslashes() -> None:
    line = _passfile_line(make_url("postgresql://u:p@h/d"))
    assert line == "h:*:d:u:p\n"


def test_the_aside_copy_sits_beside_the_database_named_by_time() -> None:
    assert aside_name(Path("/d/allotment.sqlite"), "20261202-0930") == Path(
        "/d/allotment.sqlite.before-restore-20261202-0930"
    )
    assert sqlite_file("sqlite+aiosqlite:////d/a.sqlite") == Path("/d/a.sqlite")
    assert sqlite_file("postgresql+asyncpg://u@h/d") is None
    assert sqlite_file("sqlite+aiosqlite:///:memory:") is None


def test_a_backup_never_replaces_a_file_and_is_private(tmp_path: Path) -> None:
    source = tmp_path / "a.sqlite"
    with sqlite3.connect(source) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    old = os.umask(0)
    try:
        backup_sqlite(source, tmp_path / "copy")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "copy").stat().st_mode) == 0o600
    with pytest.raises(BackupError, match="exists already"):
        backup_sqlite(source, tmp_path / "copy")
    with pytest.raises(BackupError, match="cannot create"):
        backup_sqlite(source, tmp_path / "no" / "such" / "dir")
    with pytest.raises(BackupError, match="no database at"):
        backup_sqlite(tmp_path / "missing.sqlite", tmp_path / "copy2")
    # A copy of something else is not a backup of Allotment's.
    with pytest.raises(BackupError, match="not an Allotment database"):
        check_sqlite(tmp_path / "copy")
    (tmp_path / "text").write_text("hello " * 1000)
    with pytest.raises(BackupError, match="not a SQLite database|damaged"):
        check_sqlite(tmp_path / "text")


def test_a_summary_says_what_a_backup_holds() -> None:
    summary = Summary(
        workloads={"pending": 2, "stopped": 5},
        rows={"memberships": 4, "users": 3},
        policy_versions=2,
        newest_workload=9,
    )
    assert summary.describe() == (
        "7 workloads (2 pending, 5 stopped, newest id 9), 2 policy versions, 4 memberships, 3 users"
    )
