"""Dask clusters in the controller, on the fake backend and a fake clock: workers follow what
the cluster asks for, a dead one is replaced, a cluster whose scheduler ended fails, one whose
owner went away or that sits idle is stopped with the reason, a stopping one ends once all its
workloads have, and a crash in the middle of a pass neither doubles a worker nor loses a stop.

Clusters are made as the API makes them (a ``dask_clusters`` row and its scheduler's workload
in one transaction) and their scheduler's reports are written as the report endpoint writes
them; each pass of the loop is driven by the test (``pass_once``)."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import delete as sa_delete
from sqlalchemy import select, update

from allotment.controller import dask_clusters
from allotment.controller.dask_clusters import (
    FAILURE_STREAK,
    REPORT_TIMEOUT,
    PassResult,
    Rules,
    plan,
)
from allotment.db import dask_control
from allotment.db.dask_control import ClusterFacts, Member
from allotment.db.tables import Account, DaskCluster, Membership, Profile, User, Workload
from allotment.domain.dask import ClusterState
from allotment.domain.workloads import WorkloadState
from tests.controller.conftest import Fast

G = 1024**3
ADDRESS = "tls://10.0.0.5:8786"

#: One node of six CPUs; a scheduler and each worker take one.
POLICY = """
accounts:
  lab:
    shares: 1
    members: [alice]
  owner: {members: [bob]}
pools:
  workstation:
    backend: local
    nodes:
      - {name: ws1, cpus: 6, memory: 16G}
profiles:
  small:
    pool: workstation
    size: {cpus: 1, memory: 1G}
allocations:
  - account: owner
    pool: workstation
    quota: {cpus: 2, memory: 8G}
sessions: {cull_idle: 1h, cull_warning: 10m}
scheduling: {stop_grace: 1s}
dask: {owner_grace: 60s, idle_timeout: 30m, max_workers: 8}
"""


@pytest.fixture
def policy() -> str:
    return POLICY


async def make_cluster(
    fast: Fast,
    name: str = "era5",
    *,
    account: str = "lab",
    workers: int = 0,
    session: int | None = None,
    shutdown_on_close: bool = False,
    admin: bool = False,
) -> tuple[int, int]:
    """A cluster of alice's and its scheduler's workload, as ``POST dask/clusters`` makes
    them: (cluster id, scheduler id)."""
    now = fast.clock.now()
    async with fast.controller.db.write() as s:
        user = (await s.execute(select(User.id).where(User.name == "alice"))).scalar_one()
        acct = (await s.execute(select(Account.id).where(Account.path == account))).scalar_one()
        prof = (await s.execute(select(Profile).where(Profile.name == "small"))).scalar_one()
        c = DaskCluster(
            name=name,
            user_id=user,
            account_id=acct,
            profile_id=prof.id,
            state=int(ClusterState.STARTING),
            reason="",
            worker={"cpus": 1.0, "memory": G, "gpus": 0, "threads": 1},
            python="/usr/bin/python3",
            versions={"python": "3.12.1", "dask": "2026.8.0", "distributed": "2026.8.0"},
            workers=workers,
            session_id=session,
            shutdown_on_close=shutdown_on_close,
            admin=admin,
            tls_cert="-----BEGIN CERTIFICATE-----",
            tls_key="-----BEGIN PRIVATE KEY----- secret",
            token_sha256=hashlib.sha256(secrets.token_bytes(16)).hexdigest(),
            created_at=now,
            updated_at=now,
        )
        s.add(c)
        await s.flush()
        sched = Workload(
            kind="dask-scheduler",
            name=f"{name}-scheduler",
            user_id=user,
            account_id=acct,
            pool_id=prof.pool_id,
            profile_id=prof.id,
            millicpus=1000,
            memory=G,
            gpus={},
            target=int(WorkloadState.RUNNING),
            status=int(WorkloadState.PENDING),
            reason="waiting for the scheduler",
            command=["/usr/bin/python3", "-c", "scheduler"],
            env={"ALLOT_DASK_TLS_KEY": "-----BEGIN PRIVATE KEY----- secret"},
            max_runtime=None,
            idempotency_key=None,
            cluster_id=c.id,
            created_at=now,
            updated_at=now,
        )
        s.add(sched)
        await s.flush()
        c.scheduler_id = sched.id
        ids = (c.id, sched.id)
    fast.controller.nudge()
    return ids


async def cluster_row(fast: Fast, cid: int) -> DaskCluster:
    async with fast.controller.db.read() as s:
        return (await s.execute(select(DaskCluster).where(DaskCluster.id == cid))).scalar_one()


async def write(fast: Fast, cid: int, **values: Any) -> None:
    """Change the cluster as the API does (a scale, a report, a heartbeat)."""
    async with fast.controller.db.write() as s:
        await s.execute(update(DaskCluster).where(DaskCluster.id == cid).values(**values))
    fast.controller.nudge()


async def report(fast: Fast, cid: int, **values: Any) -> None:
    """Its scheduler reports: its address, RUNNING."""
    now = fast.clock.now()
    state = int(ClusterState.RUNNING)
    await write(fast, cid, address=ADDRESS, scheduler_seen_at=now, state=state, **values)


async def workers_of(fast: Fast, cid: int) -> list[Workload]:
    async with fast.controller.db.read() as s:
        rows = await s.execute(
            select(Workload)
            .where(Workload.cluster_id == cid, Workload.kind == "dask-worker")
            .order_by(Workload.id)
        )
        return list(rows.scalars())


async def live(fast: Fast, cid: int) -> list[Workload]:
    """Its workers still meant to run."""
    return [
        w
        for w in await workers_of(fast, cid)
        if w.status < WorkloadState.STOPPING and w.target == WorkloadState.RUNNING
    ]


async def step(fast: Fast) -> PassResult:
    return await fast.controller.dask.pass_once()


async def running_cluster(fast: Fast, workers: int, **kw: Any) -> tuple[int, int, list[int]]:
    """A cluster whose scheduler and ``workers`` workers run."""
    cid, sched = await make_cluster(fast, workers=workers, **kw)
    await fast.until(sched, "running")
    await report(fast, cid)
    await step(fast)
    ids = [w.id for w in await workers_of(fast, cid)]
    for wid in ids:
        await fast.until(wid, "running")
    return cid, sched, ids


async def settle(fast: Fast, cid: int) -> DaskCluster:
    """Passes until the cluster has ended (its workloads stopping in between)."""
    for _ in range(200):
        await step(fast)
        c = await cluster_row(fast, cid)
        if ClusterState(c.state).ended:
            return c
        await fast.poll_once()
    raise AssertionError(f"cluster {cid} never ended: {c.state} {c.reason}")


# -- scaling ----------------------------------------------------------------------------------


async def test_no_worker_before_its_scheduler_reports_then_as_many_as_asked(fast: Fast) -> None:
    cid, sched = await make_cluster(fast, workers=3)
    await fast.until(sched, "running")
    await step(fast)
    assert await workers_of(fast, cid) == []  # STARTING: no address to give them yet
    await report(fast, cid)
    await step(fast)
    made = await workers_of(fast, cid)
    assert len(made) == 3
    for w in made:
        assert w.name == "era5-worker" and w.millicpus == 1000 and w.memory == G
        assert w.env is not None and w.env["ALLOT_DASK_SCHEDULER"] == ADDRESS
        assert w.env["ALLOT_DASK_TLS_KEY"].endswith("secret")
        assert w.command is not None and not any("secret" in a for a in w.command)
        await fast.until(w.id, "running")
    assert (await step(fast)).added == {}  # nothing more to do
    assert len(await workers_of(fast, cid)) == 3


async def test_scaling_down_stops_waiting_workers_first_then_the_newest(fast: Fast) -> None:
    # Six CPUs: the scheduler and five workers run, the other three wait.
    cid, _, _ = await running_cluster(fast, 0)
    await write(fast, cid, workers=8)
    await step(fast)
    made = [w.id for w in await workers_of(fast, cid)]
    assert len(made) == 8
    for wid in made[:5]:
        await fast.until(wid, "running")
    assert (await fast.get(made[5]))["status"] == "pending"
    await write(fast, cid, workers=4)
    await step(fast)
    for wid in made[5:]:
        w = await fast.until(wid, "stopped")
        assert w["reason"] == "stopped: cluster 'era5' scaled down to 4 workers"
    await fast.until(made[4], "stopped")
    assert sorted(fast.backend.running()) == sorted([*made[:4], (await scheduler(fast, cid))])


async def scheduler(fast: Fast, cid: int) -> int:
    c = await cluster_row(fast, cid)
    assert c.scheduler_id is not None
    return c.scheduler_id


async def test_workers_never_exceed_the_policys_maximum(fast: Fast) -> None:
    cid, _, _ = await running_cluster(fast, 0)
    await write(fast, cid, workers=50)
    await step(fast)
    assert len(await workers_of(fast, cid)) == 8


async def test_a_worker_that_dies_is_replaced_and_keeps_its_end(fast: Fast) -> None:
    cid, _, ids = await running_cluster(fast, 2)
    fast.backend.finish(ids[0], 1)
    await fast.poll_once()
    dead = await fast.until(ids[0], "failed")
    assert dead["ended_at"] is not None
    await step(fast)  # (or the loop did, nudged by the end)
    now = await workers_of(fast, cid)
    assert [w.id for w in now][:2] == ids and len(now) == 3
    await fast.until(now[2].id, "running")
    assert (await fast.get(ids[0]))["status"] == "failed"


async def test_workers_that_keep_failing_as_they_start_fail_the_cluster(fast: Fast) -> None:
    cid, _, ids = await running_cluster(fast, 1)
    for _ in range(FAILURE_STREAK):
        current = [w.id for w in await live(fast, cid)]
        await fast.until(current[0], "running")
        fast.backend.finish(current[0], 1)
        await fast.poll_once()
        await fast.until(current[0], "failed")
        await step(fast)
    c = await settle(fast, cid)
    assert ClusterState(c.state) == ClusterState.FAILED
    assert c.reason.startswith(f"failed: its last {FAILURE_STREAK} workers failed as they start")
    assert "exited with status 1" in c.reason


# -- failure and stops ------------------------------------------------------------------------


async def test_the_scheduler_ending_fails_the_cluster_and_stops_its_workers(fast: Fast) -> None:
    cid, sched, ids = await running_cluster(fast, 2)
    fast.backend.finish(sched, 1)
    await fast.poll_once()
    await fast.until(sched, "failed")
    await step(fast)  # (or the loop did, nudged by the end)
    c = await cluster_row(fast, cid)
    assert ClusterState(c.state) == ClusterState.STOPPING
    assert c.reason == "failed: the scheduler failed (exited with status 1)"
    for wid in ids:
        w = await fast.until(wid, "stopped")
        assert w["reason"] == f"stopped with its Dask cluster 'era5': {c.reason}"
    c = await settle(fast, cid)
    assert ClusterState(c.state) == ClusterState.FAILED and c.ended_at is not None
    assert fast.backend.running() == []


async def test_a_stop_asked_for_stops_everything_then_ends(fast: Fast) -> None:
    cid, sched, ids = await running_cluster(fast, 2)
    await write(fast, cid, state=int(ClusterState.STOPPING), reason="stopped by alice")
    c = await settle(fast, cid)
    assert ClusterState(c.state) == ClusterState.STOPPED
    assert c.reason == "stopped by alice" and c.ended_at is not None
    assert fast.backend.running() == []
    assert (await step(fast)) == PassResult()  # nothing left to do


async def test_a_starting_cluster_stops_with_nothing_but_its_scheduler(fast: Fast) -> None:
    cid, sched = await make_cluster(fast, workers=4)
    await write(fast, cid, state=int(ClusterState.STOPPING), reason="stopped by alice")
    c = await settle(fast, cid)
    assert ClusterState(c.state) == ClusterState.STOPPED
    assert (await fast.get(sched))["status"] == "stopped"
    assert await workers_of(fast, cid) == []


async def test_its_session_ending_stops_it_after_the_grace(fast: Fast) -> None:
    session = await fast.session()
    await fast.until(session, "running")
    cid, _, _ = await running_cluster(fast, 1, session=session, shutdown_on_close=True)
    kept, _, _ = await running_cluster(fast, 1, session=session, shutdown_on_close=False)
    await fast.cancel(session)
    await fast.until(session, "stopped")
    fast.clock.advance(59)
    await step(fast)
    assert ClusterState((await cluster_row(fast, cid)).state) == ClusterState.RUNNING
    fast.clock.advance(2)
    await step(fast)
    c = await settle(fast, cid)
    assert ClusterState(c.state) == ClusterState.STOPPED
    assert c.reason == f"stopped: its session (workload {session}) ended"
    # Asked to outlive its notebook, it outlives its session too (until it sits idle).
    assert ClusterState((await cluster_row(fast, kept)).state) == ClusterState.RUNNING


async def test_a_client_that_stops_heartbeating_stops_its_cluster(fast: Fast) -> None:
    cid, _, _ = await running_cluster(fast, 1, shutdown_on_close=True)
    for _ in range(5):  # heartbeats every 10 s keep it
        fast.clock.advance(10)
        await write(fast, cid, client_seen_at=fast.clock.now())
        await step(fast)
    assert ClusterState((await cluster_row(fast, cid)).state) == ClusterState.RUNNING
    fast.clock.advance(61)
    await step(fast)
    c = await settle(fast, cid)
    assert ClusterState(c.state) == ClusterState.STOPPED
    assert c.reason == (
        "stopped: the notebook that made it went away (no heartbeat from its client for 1 min)"
    )


async def test_shutdown_on_close_false_outlives_its_client(fast: Fast) -> None:
    cid, _, ids = await running_cluster(fast, 1, shutdown_on_close=False)
    fast.clock.advance(86_400)  # a day without a heartbeat, busy (never idle)
    await report(fast, cid)  # its scheduler still reports
    await step(fast)
    c = await cluster_row(fast, cid)
    assert ClusterState(c.state) == ClusterState.RUNNING
    assert (await fast.get(ids[0]))["status"] == "running"


async def test_an_idle_cluster_is_culled_with_the_reason(fast: Fast) -> None:
    cid, _, _ = await running_cluster(fast, 1)
    idle = fast.clock.now()
    await report(fast, cid, idle_since=idle)
    fast.clock.advance(29 * 60)
    await report(fast, cid, idle_since=idle)  # still idle (it reports every few seconds)
    await step(fast)
    assert ClusterState((await cluster_row(fast, cid)).state) == ClusterState.RUNNING
    fast.clock.advance(29 * 60)
    await report(fast, cid, idle_since=None)  # a task came: busy again
    await step(fast)
    idle = fast.clock.now()
    await report(fast, cid, idle_since=idle)
    fast.clock.advance(30 * 60)
    await report(fast, cid, idle_since=idle)
    await step(fast)
    c = await settle(fast, cid)
    assert ClusterState(c.state) == ClusterState.STOPPED
    assert c.reason == "stopped: idle for 30 min (no client, no task)"


async def test_a_dask_workload_of_an_ended_cluster_is_stopped(fast: Fast) -> None:
    cid, sched, ids = await running_cluster(fast, 1)
    # A cluster ended by hand (a restored database, a repair): nothing of it may run on.
    await write(fast, cid, state=int(ClusterState.STOPPED), ended_at=fast.clock.now())
    await step(fast)
    await fast.until(sched, "stopped")
    w = await fast.until(ids[0], "stopped")
    assert w["reason"] == "stopped: its Dask cluster has ended"


async def test_an_owner_reclaiming_its_share_preempts_a_dask_worker_first(fast: Fast) -> None:
    # lab borrows the whole node: its cluster's scheduler (the oldest), a job, four workers.
    cid, sched = await make_cluster(fast, workers=4)
    await fast.until(sched, "running")
    job = await fast.submit()
    await fast.until(job, "running")
    await report(fast, cid)
    await step(fast)
    workers = [w.id for w in await workers_of(fast, cid)]
    for wid in workers:
        await fast.until(wid, "running")
    owed = await fast.submit(account="owner")
    await fast.until(owed, "running")
    gone = [w for w in workers if (await fast.get(w))["status"] != "running"]
    assert len(gone) == 1
    w = await fast.until(gone[0], "stopped")
    assert w["reason"] == "preempted: account owner needs its guaranteed resources back"
    assert (await fast.get(sched))["status"] == "running"
    assert (await fast.get(job))["status"] == "running"
    # The cluster asks for its fourth worker again: it waits in the queue, saying why.
    await step(fast)
    waiting = [w for w in await live(fast, cid) if w.id not in workers]
    assert len(waiting) == 1
    w = await fast.get(waiting[0].id)
    assert w["status"] == "pending" and w["reason"]


async def test_through_the_api_create_report_adapt_scale_and_stop(fast: Fast) -> None:
    import sys
    from importlib.metadata import version

    versions = {
        "python": "{}.{}.{}".format(*sys.version_info[:3]),
        "dask": version("dask"),
        "distributed": version("distributed"),
    }
    body = {"name": "era5", "account": "lab", "profile": "small", "python": sys.executable}
    async with fast.client() as c:
        r = await c.post(
            "dask/clusters",
            json={**body, "versions": versions, "adapt": {"minimum": 1, "maximum": 3}},
        )
        assert r.status_code == 201, r.text
        cid, sched = r.json()["id"], r.json()["scheduler"]
        await fast.until(sched, "running")
        async with fast.controller.db.read() as s:
            env = (await s.execute(select(Workload.env).where(Workload.id == sched))).scalar_one()
        assert env is not None
        reporter = {"Authorization": f"token {env['ALLOT_DASK_TOKEN']}"}
        said = {"address": ADDRESS, "versions": versions, "clients": 1, "tasks": 50}
        # The scheduler asks for ten workers: adaptive within 1-3, three it gets.
        r = await c.post("dask/report", json={**said, "adaptive_target": 10}, headers=reporter)
        assert r.status_code == 200, r.text
        await step(fast)
        three = [w.id for w in await live(fast, cid)]
        assert len(three) == 3
        for wid in three:
            await fast.until(wid, "running")
        # Scaled down to one: the idle worker the scheduler names goes first, then the
        # newest; names that are no workload of it are passed over.
        idle = ["tcp://10.0.0.9:1234", "\u0663", str(three[0])]
        r = await c.post(
            "dask/report",
            json={**said, "adaptive_target": 0, "idle_workers": idle},
            headers=reporter,
        )
        await step(fast)
        assert [w.id for w in await live(fast, cid)] == [three[1]]
        r = await c.post("dask/clusters/era5/scale", json={"workers": 2})
        assert r.status_code == 200, r.text
        await step(fast)
        for w in await live(fast, cid):
            await fast.until(w.id, "running")
        out = (await c.get("dask/clusters/era5")).json()
        assert (out["state"], out["running"], out["requested"]) == ("running", 2, 0)
        r = await c.post("dask/clusters/era5/stop")
        assert r.status_code == 200, r.text
        c_row = await settle(fast, cid)
        assert ClusterState(c_row.state) == ClusterState.STOPPED
        out = (await c.get("dask/clusters/era5", params={"ended": "true"})).json()
        assert out["state"] == "stopped" and out["reason"].startswith("stopped by ")
    assert fast.backend.running() == []


# -- crashes and repeats ----------------------------------------------------------------------


async def test_a_creation_retried_with_its_key_gets_the_same_cluster(fast: Fast) -> None:
    import sys

    body = {"name": "era5", "account": "lab", "profile": "small", "python": sys.executable}
    key = {"Idempotency-Key": "3f1c2b9e-retry"}
    async with fast.client() as c:
        first = await c.post("dask/clusters", json=body, headers=key)
        assert first.status_code == 201, first.text
        again = await c.post("dask/clusters", json=body, headers=key)
        assert again.status_code == 200, again.text
        assert again.json()["id"] == first.json()["id"]
        assert again.json()["scheduler"] == first.json()["scheduler"]
        # Without the key the same request is a second cluster of the same name: refused.
        r = await c.post("dask/clusters", json=body)
        assert r.status_code == 409 and "already have a Dask cluster called 'era5'" in r.text
        # A key that submitted a job makes no cluster.
        job = {"command": ["true"], "account": "lab", "profile": "small"}
        r = await c.post("workloads", json=job, headers={"Idempotency-Key": "job-1"})
        assert r.status_code == 201, r.text
        other = {**body, "name": "other"}
        r = await c.post("dask/clusters", json=other, headers={"Idempotency-Key": "job-1"})
        assert r.status_code == 409, r.text
        assert "was used to submit workload" in r.json()["detail"]
        # And the other way: a key that made a cluster submits no job (nor hands back the
        # cluster's scheduler as if it were the job).
        r = await c.post("workloads", json=job, headers=key)
        assert r.status_code == 409, r.text
        detail = r.json()["detail"]
        assert f"scheduler is workload {first.json()['scheduler']}" in detail, detail
        assert "used to create a Dask cluster" in detail
    async with fast.controller.db.read() as s:
        made = (await s.execute(select(DaskCluster.id))).scalars().all()
    assert made == [first.json()["id"]]


async def test_a_pass_that_fails_midway_writes_nothing_and_the_next_does_it_once(
    fast: Fast, monkeypatch: pytest.MonkeyPatch
) -> None:
    cid, _, _ = await running_cluster(fast, 1)
    real = dask_control.insert_workers

    def dies(*a: Any, **kw: Any) -> int:
        real(*a, **kw)
        raise RuntimeError("power cut")

    # It dies after inserting the workers, before its transaction commits.
    monkeypatch.setattr(dask_clusters, "insert_workers", dies)
    await write(fast, cid, workers=4)
    with pytest.raises(RuntimeError):
        await step(fast)
    assert len(await live(fast, cid)) == 1  # rolled back: no worker was added
    monkeypatch.setattr(dask_clusters, "insert_workers", real)
    await step(fast)
    await step(fast)
    assert len(await live(fast, cid)) == 4


async def test_a_restarted_controller_makes_no_second_worker_for_a_slot(fast: Fast) -> None:
    cid, _, _ = await running_cluster(fast, 2)
    await write(fast, cid, workers=5)
    await step(fast)
    await fast.abandon()
    await fast.restart()
    await fast.controller.dask.pass_once()
    made = await workers_of(fast, cid)
    assert len(made) == 5
    for w in made:
        await fast.until(w.id, "running")
    assert all(n == 1 for n in fast.backend.launches.values())


async def test_concurrent_passes_agree(fast: Fast) -> None:
    import asyncio

    cid, _, _ = await running_cluster(fast, 0)
    await write(fast, cid, workers=6)
    await asyncio.gather(*(step(fast) for _ in range(4)))
    assert len(await workers_of(fast, cid)) == 6


# -- the rules, pure ----------------------------------------------------------------------------

T0 = datetime(2026, 12, 2, 12, 0, tzinfo=datetime.now().astimezone().tzinfo)


def facts(members: list[Member], workers: int, **kw: Any) -> ClusterFacts:
    base: dict[str, Any] = {
        "id": 1,
        "name": "c",
        "user_id": 1,
        "account_id": 1,
        "profile_id": 1,
        "state": ClusterState.RUNNING,
        "reason": "",
        "worker": {"cpus": 1, "memory": G, "gpus": 0, "threads": 1},
        "python": "/usr/bin/python3",
        "workers": workers,
        "scheduler_id": 1,
        "session_id": None,
        "shutdown_on_close": False,
        "address": ADDRESS,
        "client_seen_at": None,
        "idle_since": None,
        "created_at": T0,
        "session_status": None,
        "session_ended_at": None,
        "members": tuple(members),
    }
    return ClusterFacts(**{**base, **kw})


def member(i: int, status: WorkloadState, kind: str = "dask-worker") -> Member:
    return Member(i, kind, status, WorkloadState.RUNNING, "", None, None)


_STATES = st.sampled_from(
    [WorkloadState.PENDING, WorkloadState.ADMITTED, WorkloadState.STARTING, WorkloadState.RUNNING]
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_STATES, max_size=12),
    st.integers(0, 20),
    st.integers(1, 10),
    st.lists(st.integers(1, 16), unique=True, max_size=8),
)
def test_a_plan_brings_live_workers_to_what_is_asked(
    states: list[WorkloadState], asked: int, maximum: int, idle: list[int]
) -> None:
    scheduler = member(1, WorkloadState.RUNNING, "dask-scheduler")
    workers = [member(i + 2, s) for i, s in enumerate(states)]
    c = facts([scheduler, *workers], asked, idle_workers=tuple(idle))
    p = plan(c, Rules(max_workers=maximum), T0)
    want = min(asked, maximum)
    assert p.stop is None and p.end is None
    assert len(workers) + p.add - len(p.cancel) == want
    assert not (p.add and p.cancel)
    assert 1 not in p.cancel  # never the scheduler
    # Those stopped are the least advanced, then those the scheduler named idle (in its
    # order), then the newest.
    rank = {wid: i for i, wid in enumerate(idle)}

    def order(w: Member) -> tuple[int, int, int]:
        return (w.status, rank.get(w.id, len(idle)), -w.id)

    kept = [w for w in workers if w.id not in p.cancel]
    for gone in (w for w in workers if w.id in p.cancel):
        assert all(order(gone) <= order(k) for k in kept)
    # Deciding again after doing it changes nothing.
    after = [*kept, *(member(100 + i, WorkloadState.PENDING) for i in range(p.add))]
    again = facts([scheduler, *after], asked, idle_workers=tuple(idle))
    assert plan(again, Rules(max_workers=maximum), T0).empty


def test_the_rules_are_read_from_the_policy() -> None:
    from allotment.config.models import DaskSpec

    r = Rules.of(DaskSpec.model_validate({"owner_grace": "2m", "idle_timeout": 0}))
    assert r == Rules(owner_grace=120.0, idle_timeout=0.0, max_workers=64)
    # No idle timeout: an idle cluster goes on for ever.
    c = facts([member(1, WorkloadState.RUNNING, "dask-scheduler")], 0, idle_since=T0)
    assert plan(c, r, T0 + timedelta(days=30)).empty


def test_a_session_that_is_gone_counts_as_ended() -> None:
    c = facts(
        [member(1, WorkloadState.RUNNING, "dask-scheduler")],
        0,
        session_id=42,
        shutdown_on_close=True,
        client_seen_at=T0 + timedelta(days=1),
    )
    assert plan(c, Rules(), T0 + timedelta(seconds=59)).stop is None
    assert plan(c, Rules(), T0 + timedelta(seconds=60)).stop == (
        "stopped: its session (workload 42) ended"
    )


def test_a_stopping_cluster_ends_only_once_its_workloads_have() -> None:
    stopping = {"state": ClusterState.STOPPING, "reason": "failed: the scheduler failed"}
    sched = member(1, WorkloadState.STOPPED, "dask-scheduler")
    p = plan(facts([sched, member(2, WorkloadState.RUNNING)], 3, **stopping), Rules(), T0)
    assert p.end is None and list(p.cancel) == [2] and p.add == 0
    p = plan(facts([sched, member(2, WorkloadState.FAILED)], 3, **stopping), Rules(), T0)
    assert p.end == ClusterState.FAILED and not p.cancel


def test_grace_under_a_minute_reads_in_seconds() -> None:
    c = facts([member(1, WorkloadState.RUNNING, "dask-scheduler")], 0, shutdown_on_close=True)
    p = plan(c, Rules(owner_grace=30), T0 + timedelta(seconds=30))
    assert p.stop is not None and p.stop.endswith("for 30 s)")


def test_a_gpu_worker_gets_the_profiles_model_else_the_pools() -> None:
    from allotment.config.models import ProfileSpec
    from allotment.db.dask_control import _gpus

    pool = {"nodes": [{"name": "g1", "cpus": 8, "memory": "64G", "gpus": {"a100": 4}}]}
    named = ProfileSpec.model_validate(
        {"pool": "gpu", "size": {"cpus": 1, "memory": "1G", "gpus": {"h100": 1}}}
    )
    counted = ProfileSpec.model_validate({"pool": "gpu", "size": {"cpus": 1, "memory": "1G"}})
    assert _gpus(named, pool, 2) == {"h100": 2}
    assert _gpus(counted, pool, 1) == {"a100": 1}
    assert _gpus(counted, pool, 0) == {}
    plain = {"nodes": [{"name": "n1", "cpus": 8, "memory": "64G"}]}
    assert _gpus(counted, plain, 1) == {}


# -- a scheduler gone quiet, an owner who may no longer charge, secrets after the end ---------


async def test_a_scheduler_that_stops_reporting_fails_its_cluster(fast: Fast) -> None:
    cid, _, _ = await running_cluster(fast, 1)
    fast.clock.advance(REPORT_TIMEOUT - 1)
    await step(fast)
    assert ClusterState((await cluster_row(fast, cid)).state) == ClusterState.RUNNING
    fast.clock.advance(2)
    await step(fast)
    c = await settle(fast, cid)
    assert ClusterState(c.state) == ClusterState.FAILED
    assert c.reason.startswith("failed: its scheduler stopped reporting to the service")


def test_silence_before_the_controller_watched_is_not_the_schedulers() -> None:
    c = facts(
        [member(1, WorkloadState.RUNNING, "dask-scheduler")],
        0,
        state=ClusterState.RUNNING,
        address="tls://127.0.0.1:1",
        scheduler_seen_at=T0,
    )
    back = T0 + timedelta(hours=1)  # the service was down for an hour
    wait = timedelta(seconds=REPORT_TIMEOUT)
    assert plan(c, Rules(), back + wait / 2, watching_since=back).stop is None
    assert (plan(c, Rules(), back + wait, watching_since=back).stop or "").startswith(
        "failed: its scheduler stopped reporting"
    )


def test_a_scheduler_that_never_reports_fails_its_cluster() -> None:
    sched = Member(1, "dask-scheduler", WorkloadState.RUNNING, WorkloadState.RUNNING, "", T0, None)
    c = facts([sched], 0, state=ClusterState.STARTING)
    wait = timedelta(seconds=2 * REPORT_TIMEOUT)
    assert plan(c, Rules(), T0 + wait - timedelta(seconds=1)).stop is None
    assert "`dask.service_url`" in (plan(c, Rules(), T0 + wait).stop or "")


async def test_an_owner_who_may_no_longer_charge_the_account_has_it_stopped(fast: Fast) -> None:
    cid, _, _ = await running_cluster(fast, 1)
    kept, _, _ = await running_cluster(fast, 1, name="admins", admin=True)
    async with fast.controller.db.write() as s:
        alice = (await s.execute(select(User.id).where(User.name == "alice"))).scalar_one()
        await s.execute(sa_delete(Membership).where(Membership.user_id == alice))
    await step(fast)
    c = await settle(fast, cid)
    assert ClusterState(c.state) == ClusterState.STOPPED
    assert c.reason.startswith("stopped: its owner may no longer charge its account")
    # An administrator's right to charge came from the hub, not from a membership.
    assert ClusterState((await cluster_row(fast, kept)).state) == ClusterState.RUNNING


async def test_an_ended_cluster_keeps_no_secret(fast: Fast) -> None:
    cid, sched, ids = await running_cluster(fast, 2)
    await write(fast, cid, state=int(ClusterState.STOPPING), reason="stopped by alice")
    c = await settle(fast, cid)
    assert c.tls_key == "" and c.tls_cert
    async with fast.controller.db.read() as s:
        envs = (
            await s.execute(select(Workload.env).where(Workload.id.in_([sched, *ids])))
        ).scalars()
        assert all(env is None for env in envs)
