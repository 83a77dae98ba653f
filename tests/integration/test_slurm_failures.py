"""Failures of a real Slurm cluster under a real `allot serve`: slurmctld stopped and started
again, a node's slurmd and job steps killed mid-job, a node drained by an administrator.

The cluster is this module's own (three nodes, accounting on), not the session's shared one:
these tests stop its controller and kill its nodes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from allotment.db.engine import Database
from allotment.db.tables import LedgerEntry, OpenCharge
from tests.backends.conftest import ROOT
from tests.integration.test_slurm_jobs import slurm_service, submit
from tests.support.hub import Hub
from tests.support.jobs import JobService, ended, wait_for, workload
from tests.support.slurm import (
    SlurmCluster,
    SlurmUnavailable,
    start_cluster,
    stop_cluster,
    usable,
)

pytestmark = [
    pytest.mark.jupyterhub,
    pytest.mark.skipif(not ROOT, reason="submits jobs as other POSIX accounts: needs root"),
]


@pytest.fixture(scope="module")
def cluster() -> Iterator[SlurmCluster]:
    why = usable()
    if why:
        pytest.skip(why)
    try:
        c = start_cluster(nodes=3)
    except SlurmUnavailable as e:
        pytest.skip(str(e))
    try:
        yield c
    finally:
        stop_cluster(c)


@pytest.fixture(scope="module")
def db_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('slurm-db') / 'allotment.sqlite'}"


@pytest.fixture(scope="module")
def svc(
    tmp_path_factory: pytest.TempPathFactory, hub: Hub, cluster: SlurmCluster, db_url: str
) -> Iterator[JobService]:
    with slurm_service(tmp_path_factory.mktemp("slurm-failures"), hub, cluster, db_url) as s:
        yield s


def _at(text: object) -> float:
    return datetime.fromisoformat(str(text)).timestamp()


def _entries(url: str, wid: int) -> tuple[list[tuple[float, float]], int]:
    """The workload's ledger entries as (start, end) epoch seconds, in order, and how many of
    its charges are still open."""

    async def read() -> tuple[list[tuple[float, float]], int]:
        db = Database(url)
        try:
            async with db.read() as s:
                rows = (
                    await s.execute(
                        select(LedgerEntry.start, LedgerEntry.end)
                        .where(LedgerEntry.workload_id == wid)
                        .order_by(LedgerEntry.start)
                    )
                ).all()
                still_open = len(
                    (
                        await s.execute(
                            select(OpenCharge.workload_id).where(
                                OpenCharge.workload_id == wid, ~OpenCharge.closed
                            )
                        )
                    )
                    .scalars()
                    .all()
                )
            return [(a.timestamp(), b.timestamp()) for a, b in rows], still_open
        finally:
            await db.dispose()

    return asyncio.run(read())


@pytest.mark.timeout(300)
def test_slurmctld_stopped_loses_nothing_and_everything_resumes(
    svc: JobService, hub: Hub, shared: Path, cluster: SlurmCluster
) -> None:
    alice = hub.token("alice")
    running = submit(svc, alice, shared, "-p", "small", "--", "sh", "-c", "sleep 20; echo ran")
    wait_for(lambda: workload(svc, alice, running)["status"] == "running", 60, what="running")
    cluster.stop_controller()
    try:
        # Submitting still works: Allotment takes the jobs and says what they wait for.
        waiting = [
            submit(svc, alice, shared, "-p", "small", "--", "echo", f"after {i}") for i in range(2)
        ]
        for wid in waiting:
            seen: list[dict[str, object]] = []

            def says_so(wid: int = wid, seen: list[dict[str, object]] = seen) -> bool:
                seen.append(workload(svc, alice, wid))
                return "does not answer" in str(seen[-1]["reason"])

            try:
                wait_for(says_so, 90, what="the reason to say Slurm does not answer")
            except AssertionError as e:
                last = [(x["status"], x["reason"]) for x in seen[-3:]]
                raise AssertionError(f"{e}: {last}") from None
            assert seen[-1]["status"] in ("admitted", "starting"), seen[-1]
        # Nothing is concluded about the job it cannot see.
        time.sleep(3)
        assert workload(svc, alice, running)["status"] == "running"
        listed = svc.allot(alice, "jobs", "--json")
        reasons = {w["id"]: w["reason"] for w in json.loads(listed.stdout)}
        assert all("does not answer" in reasons[wid] for wid in waiting), reasons
    finally:
        cluster.start_controller()
    for wid in [running, *waiting]:
        w = ended(svc, alice, wid, 120)
        assert (w["status"], w["exit_code"]) == ("stopped", 0), w
    assert svc.allot(alice, "logs", str(running)).stdout == "ran\n"
    for i, wid in enumerate(waiting):
        assert svc.allot(alice, "logs", str(wid)).stdout == f"after {i}\n"


@pytest.mark.timeout(600)
def test_a_node_failing_mid_job_requeues_it_and_charges_only_what_ran(
    svc: JobService, hub: Hub, shared: Path, cluster: SlurmCluster, db_url: str
) -> None:
    """Slurm declares the node down (~30 s with the test cluster's timeouts), ends the run
    NODE_FAIL and requeues the batch job, which starts again on another node. The lost run is
    charged from its start up to when it was seen requeued; the time queued again is not."""
    bob = hub.token("bob")
    wid = submit(
        svc, bob, shared, "-p", "small", "--", "sh", "-c", 'echo "on $(hostname)"; sleep 15'
    )
    first = wait_for(
        lambda: (x := workload(svc, bob, wid))["status"] == "running" and x, 60, what="running"
    )
    node = str(first["node"])
    time.sleep(3)
    killed_at = time.time()
    cluster.kill_node(node)
    try:
        again = wait_for(
            lambda: "requeued" in str((x := workload(svc, bob, wid))["reason"]) and x,
            120,
            every=0.5,
            what="the job to show requeued",
        )
        seen_at = time.time()
        assert again["status"] in ("starting", "pending"), again
        assert f"node {node} stopped responding" in str(again["reason"]), again
        w = ended(svc, bob, wid, 400)
        assert (w["status"], w["exit_code"]) == ("stopped", 0), w
        assert w["node"] != node
    finally:
        cluster.start_node(node)
    wait_for(lambda: _entries(db_url, wid)[1] == 0, 60, what="its charges to close")
    entries, _ = _entries(db_url, wid)
    gaps = [(a[1], b[0]) for a, b in zip(entries, entries[1:], strict=False) if b[0] > a[1]]
    assert len(gaps) == 1, entries  # two runs: one gap, while queued again
    lost_end, rerun_start = gaps[0]
    assert entries[0][0] == pytest.approx(_at(first["started_at"]), abs=0.01)
    assert killed_at - 1 <= lost_end <= seen_at + 1
    assert rerun_start == pytest.approx(_at(w["started_at"]), abs=0.01)
    assert entries[-1][1] == pytest.approx(_at(w["ended_at"]), abs=0.01)


def test_a_drained_node_shows_in_allot_pools_with_its_reason(
    svc: JobService, hub: Hub, cluster: SlurmCluster
) -> None:
    carol = hub.token("carol")
    cluster.drain("n3", "disk replaced")
    try:

        def n3() -> str:
            out = svc.allot(carol, "pools").stdout
            return next((line for line in out.splitlines() if " n3 " in line), "")

        line = wait_for(lambda: "disk replaced" in n3() and n3(), 15, what="n3 drained")
        assert "drained" in line and "cluster" in line and "slurm" in line, line
        others = svc.allot(carol, "pools").stdout
        assert "n1" in others and "idle" in others
    finally:
        cluster.resume("n3")
    wait_for(lambda: "disk replaced" not in svc.allot(carol, "pools").stdout, 15, what="resumed")
