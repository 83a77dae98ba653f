"""The whole service (`allot serve`, its API and its controller) killed with SIGKILL while it
meters running jobs, and started again: every job is charged for exactly its run, once.

Real processes, real jobs as a POSIX user, both databases; charges close every second and
entries span a minute, so the kills land between and inside passes and across entries. The
jobs outlive their service (by design): the service started again finds them running, goes on
charging them, and closes their charges when they end.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from allotment.db.engine import Database
from allotment.db.ledger import totals
from allotment.db.tables import LedgerEntry, OpenCharge, Workload
from allotment.domain.ledger import charge, epoch_ms
from tests.backends.conftest import ROOT
from tests.support.hub import Hub, free_port
from tests.support.jobs import ended, job_service, wait_for, workload

pytestmark = [
    pytest.mark.jupyterhub,
    pytest.mark.skipif(not ROOT, reason="runs workloads as other POSIX accounts: needs root"),
]

POLICY = """\
accounts:
  lab: {members: [alice]}
pools:
  box:
    backend: local
    nodes: [{name: localhost, cpus: 2, memory: 4G}]
    rates: {cpu: 3600}
profiles:
  small: {pool: box, size: {cpus: 1, memory: 256M}, max_runtime: 1h}
scheduling: {stop_grace: 2s, interval: 1s}
accounting: {interval: 1s, entry: 1m}
"""

#: 3,600 credits a CPU-hour: one credit (a million micros) a second for a one-CPU job.
RATE = 3600 * 1_000_000


def _ledger(url: str) -> tuple[dict[int, list[LedgerEntry]], int, tuple[int, int, int]]:
    async def read() -> tuple[dict[int, list[LedgerEntry]], int, tuple[int, int, int]]:
        db = Database(url)
        try:
            async with db.read() as s:
                entries: dict[int, list[LedgerEntry]] = {}
                for e in (
                    await s.execute(select(LedgerEntry).order_by(LedgerEntry.start))
                ).scalars():
                    entries.setdefault(e.workload_id or 0, []).append(e)
                still_open = len(
                    (await s.execute(select(OpenCharge.workload_id).where(~OpenCharge.closed)))
                    .scalars()
                    .all()
                )
            return entries, still_open, await db.run_read(totals)
        finally:
            await db.dispose()

    return asyncio.run(read())


def _times(url: str, wids: list[int]) -> dict[int, tuple[int, int]]:
    async def read() -> dict[int, tuple[int, int]]:
        db = Database(url)
        try:
            async with db.read() as s:
                rows = await s.execute(
                    select(Workload.id, Workload.started_at, Workload.ended_at).where(
                        Workload.id.in_(wids)
                    )
                )
                return {i: (epoch_ms(a), epoch_ms(b)) for i, a, b in rows}
        finally:
            await db.dispose()

    return asyncio.run(read())


@pytest.mark.timeout(600)
def test_the_service_killed_while_metering_charges_each_run_once(
    database_url: str, tmp_path: Path, hub: Hub, shared: Path
) -> None:
    alice = hub.token("alice")
    data, port = tmp_path / "data", free_port()
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY)
    workdir = shared  # not under /tmp: each workload has a private /tmp of its own
    wids: list[int] = []
    for kill in range(3):
        with job_service(port, data, database_url, hub.api_url, policy, start_within=120) as s:
            if not wids:
                with s.client(alice) as c:
                    for _ in range(2):
                        r = c.post(
                            "workloads",
                            json={
                                "profile": "small",
                                "command": ["sleep", "25"],
                                "workdir": str(workdir),
                            },
                        )
                        assert r.status_code == 201, r.text
                        wids.append(int(r.json()["id"]))
                for wid in wids:
                    wait_for(
                        lambda w=wid: workload(s, alice, w)["status"] == "running",
                        60,
                        what=f"{wid} to run",
                    )
            if kill < 2:
                time.sleep(3 + 1.7 * kill)  # a few passes, then killed mid-flight
                s.proc.kill()
                s.proc.wait()
                continue
            for wid in wids:
                w = ended(s, alice, wid, 120)
                assert w["status"] == "stopped" and w["exit_code"] == 0, w
            wait_for(lambda: _ledger(database_url)[1] == 0, 60, what="the charges to close")
    entries, _, (days, in_entries, still) = _ledger(database_url)
    assert days == in_entries + still
    times = _times(database_url, wids)
    for wid in wids:
        mine = entries[wid]
        start, end = times[wid]
        # From its start to its end, no gap and no overlap, whatever the kills.
        assert epoch_ms(mine[0].start) == start and epoch_ms(mine[-1].end) == end
        for a, b in zip(mine, mine[1:], strict=False):
            assert a.end == b.start, (wid, a.key, b.key)
        assert len({e.key for e in mine}) == len(mine)
        # Each entry is its span's charge rounded once: the sum is the run's within a micro
        # an entry.
        total = sum(e.amount for e in mine)
        assert abs(total - charge(RATE, end - start)) <= len(mine), (wid, total)
        assert {e.kind for e in mine} == {"charge"}
