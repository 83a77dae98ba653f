"""The usage import in the fast tier: ``SlurmUsageImport`` against ``RecordedSacct``, a named
fake runner answering ``sacct --json`` with what a real Slurm printed
(``tests/data/slurm/sacct_X.json``: ada's and grace's jobs in ``astro``, ``hep`` and
``chemistry`` on partition ``main``), charging a real SQLite ledger. The real thing:
tests/integration/test_slurm_usage.py (root, a real cluster)."""

from __future__ import annotations

import json
import logging
import pwd
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from allotment.backends.identity import mark
from allotment.backends.slurm.runner import Completed, SlurmUnavailable
from allotment.backends.slurm.usage import SOURCE
from allotment.controller.slurm_usage import SlurmUsageImport
from allotment.db.tables import Account, LedgerEntry, User, Workload
from tests.controller.conftest import Fast

RECORDED = Path(__file__).parent.parent / "data" / "slurm" / "sacct_X.json"
INSTALLATION = "fasttest"
#: After every recorded job ended (the last, 1100016's second run, at 1796225480).
NOW = datetime.fromtimestamp(1796225600, UTC)

POLICY = """
accounts:
  astro: {members: [ada]}
  hep: {members: [grace]}
  chemistry: {members: [ada]}
pools:
  cluster:
    backend: slurm
    partition: main
    nodes:
      - {name: n1, cpus: 2, memory: 4G}
      - {name: n2, cpus: 2, memory: 4G}
      - {name: n3, cpus: 2, memory: 4G}
    rates: {cpu: 3.6}
profiles:
  small: {pool: cluster, size: {cpus: 1, memory: 1G}}
accounting: {interval: 1m, entry: 1m}
"""


@pytest.fixture
def policy() -> str:
    return POLICY


@pytest.fixture
def kind() -> str:
    return "slurm"


@dataclass
class FakePasswd:
    pw_name: str
    pw_gecos: str


def fake_getpwnam(name: str) -> FakePasswd:
    """The recording's POSIX users as accounts Allotment made for the hub users of the same
    name (marked so in their GECOS field), without creating any on this machine."""
    if name in ("ada", "grace"):
        return FakePasswd(name, mark(name))
    raise KeyError(name)


@pytest.fixture(autouse=True)
def accounts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pwd, "getpwnam", fake_getpwnam)  # as ``slurm_usage`` calls it


@dataclass
class RecordedSacct:
    """``sacct --json`` answering the recording (``renamed``: job id → another job name);
    ``down``: it fails as sacct does while slurmdbd does not answer."""

    renamed: dict[int, str] = field(default_factory=dict)
    down: bool = False
    commands: list[tuple[str, ...]] = field(default_factory=list)

    async def run(
        self,
        argv: Sequence[str],
        *,
        user: str | None = None,
        stdin: bytes | None = None,
        check: bool = True,
    ) -> Completed:
        argv = tuple(argv)
        self.commands.append(argv)
        if self.down:
            raise SlurmUnavailable("sacct: error: Problem talking to the database")
        doc: dict[str, Any] = json.loads(RECORDED.read_text())
        for job in doc["jobs"]:
            job["name"] = self.renamed.get(job["job_id"], job["name"])
        return Completed(argv, 0, json.dumps(doc).encode(), b"", 0.2)


async def ledger(fast: Fast) -> dict[str, int]:
    """Imported entries by account and hub user."""
    async with fast.controller.db.read() as s:
        rows = await s.execute(
            select(Account.path, User.name, func.count())
            .select_from(LedgerEntry)
            .join(Account, Account.id == LedgerEntry.account_id)
            .join(User, User.id == LedgerEntry.user_id)
            .where(LedgerEntry.source == SOURCE)
            .group_by(Account.path, User.name)
        )
        return {f"{path}/{user}": n for path, user, n in rows}


async def test_recorded_jobs_are_charged_once(fast: Fast) -> None:
    sacct = RecordedSacct()
    usage = SlurmUsageImport(fast.controller.db, fast.clock, sacct, installation=INSTALLATION)
    done = await usage.import_once(now=NOW)
    assert sacct.commands[0][:5] == ("sacct", "--json", "-X", "-a", "-D")
    assert done.jobs == 14
    assert done.skipped == {"not started": 3}
    assert done.charged == done.planned > 0
    charged = await ledger(fast)
    # chemistry's one job that started (1100003, ``exit 3``) ran for no time at all: nothing.
    assert set(charged) == {"astro/ada", "hep/grace"}
    again = await usage.import_once(now=NOW)
    assert (again.jobs, again.planned, again.charged) == (14, done.planned, 0)
    assert await ledger(fast) == charged


async def test_a_job_of_a_workload_is_not_imported_one_named_like_it_is(fast: Fast) -> None:
    wid = await fast.submit("work", account="astro")
    await fast.until(wid, "running")  # its start written: the placement set below stays
    async with fast.controller.db.write() as s:
        await s.execute(
            update(Workload).where(Workload.id == wid).values(placement={"job_id": 1100002})
        )
    name = f"allot.{INSTALLATION}.{wid}"
    # 1100002 is the workload's job; 1100006, a user's job that took the same name, is not.
    sacct = RecordedSacct(renamed={1100002: name, 1100006: name})
    usage = SlurmUsageImport(fast.controller.db, fast.clock, sacct, installation=INSTALLATION)
    done = await usage.import_once(now=NOW)
    assert done.skipped == {"not started": 3, "ours": 1}
    async with fast.controller.db.read() as s:
        ids = set(
            (
                await s.execute(select(LedgerEntry.external_id).where(LedgerEntry.source == SOURCE))
            ).scalars()
        )
    assert any("1100006" in str(i) for i in ids)
    assert not any("1100002" in str(i) for i in ids)


async def test_sacct_failing_is_skipped_and_said_once(
    fast: Fast, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "allotment.controller")
    sacct = RecordedSacct(down=True)
    usage = SlurmUsageImport(fast.controller.db, fast.clock, sacct, installation=INSTALLATION)
    for _ in range(3):
        done = await usage.import_once(now=NOW)
        assert (done.jobs, done.charged) == (0, 0)
    waits = [r for r in caplog.records if "sacct failed" in r.getMessage()]
    assert len(waits) == 1 and len(sacct.commands) == 3
    assert await ledger(fast) == {}
    sacct.down = False
    done = await usage.import_once(now=NOW)
    assert done.charged > 0
    assert any("sacct answers" in r.getMessage() for r in caplog.records)
