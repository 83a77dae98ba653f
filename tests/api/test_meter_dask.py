"""A session's meter adds the Dask clusters it owns: their running workers and what the
scheduler and those workers cost per hour together, each at its own pool's rates (the
JupyterLab meter shows "+ 8 Dask workers: 1.35 credits/h"); on both databases."""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from allotment.db.tables import DaskCluster, Profile, Workload
from allotment.domain.dask import ClusterState
from allotment.domain.workloads import WorkloadState
from tests.support.service import Service, running_service

G = 1024**3

POLICY = """
currency: credits
accounts:
  lab: {members: [alice]}
pools:
  workstation:
    backend: local
    nodes: [{name: ws1, cpus: 32, memory: 128G}]
    rates: {cpu: 0.10, memory: 0.05}
  gpu:
    backend: local
    nodes: [{name: g1, cpus: 8, memory: 64G, gpus: {a100: 2}}]
    rates: {cpu: 0.10, memory: 0.05, gpu: {a100: 2.0}}
profiles:
  small:
    pool: workstation
    size: {cpus: 1, memory: 1G}
  a100:
    pool: gpu
    size: {cpus: 1, memory: 1G, gpus: {a100: 1}}
"""

S = WorkloadState


async def _submit(svc: Service, profile: str = "small") -> int:
    async with svc.admin() as c:
        r = await c.post("workloads", json={"profile": profile, "account": "lab", "command": ["x"]})
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


async def _session(svc: Service) -> int:
    """A running session (a job made one: the spawner's token needs a real hub)."""
    wid = await _submit(svc)
    db = svc.app.state.allotment.db
    async with db.write() as s:
        await s.execute(
            update(Workload)
            .where(Workload.id == wid)
            .values(kind="session", status=int(S.RUNNING), started_at=svc.clock.now(), node="ws1")
        )
    return wid


async def _cluster(
    s: AsyncSession,
    svc: Service,
    session: int | None,
    state: ClusterState,
    members: list[tuple[str, str, WorkloadState]],
    name: str = "era5",
) -> int:
    """A cluster owned by ``session`` with workloads (kind, profile, status)."""
    owner = (await s.execute(select(Workload).where(Workload.id == session))).scalar_one()
    profiles = {p.name: p for p in (await s.execute(select(Profile))).scalars()}
    now = svc.clock.now()
    c = DaskCluster(
        name=name,
        user_id=owner.user_id,
        account_id=owner.account_id,
        profile_id=profiles["small"].id,
        state=int(state),
        reason="",
        worker={"cpus": 1.0, "memory": G, "gpus": 0, "threads": 1},
        python="/usr/bin/python3",
        workers=len(members),
        session_id=session,
        tls_cert="cert",
        tls_key="key",
        token_sha256=hashlib.sha256(secrets.token_bytes(16)).hexdigest(),
        created_at=now,
        updated_at=now,
    )
    s.add(c)
    await s.flush()
    for kind, profile, status in members:
        p = profiles[profile]
        s.add(
            Workload(
                kind=kind,
                name=f"{name}-{kind}",
                user_id=owner.user_id,
                account_id=owner.account_id,
                pool_id=p.pool_id,
                profile_id=p.id,
                millicpus=1000,
                memory=G,
                gpus={"a100": 1} if profile == "a100" else {},
                target=int(S.RUNNING if status < S.STOPPING else S.STOPPED),
                status=int(status),
                reason="",
                command=["python"],
                max_runtime=None,
                idempotency_key=None,
                cluster_id=c.id,
                created_at=now,
                updated_at=now,
                started_at=now if status >= S.RUNNING else None,
                ended_at=now if status >= S.STOPPED else None,
            )
        )
    await s.flush()
    return c.id


async def _meter(svc: Service, wid: int) -> dict[str, Any]:
    async with svc.admin() as c:
        r = await c.get(f"workloads/{wid}/meter")
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


async def test_a_sessions_meter_adds_its_running_clusters(
    database_url: str, tmp_path: Path
) -> None:
    async with running_service(database_url, tmp_path, policy_text=POLICY) as svc:
        session = await _session(svc)
        other = await _session(svc)
        db = svc.app.state.allotment.db
        async with db.write() as s:
            await _cluster(
                s,
                svc,
                session,
                ClusterState.RUNNING,
                [
                    ("dask-scheduler", "small", S.RUNNING),
                    *[("dask-worker", "small", S.RUNNING)] * 8,
                    ("dask-worker", "small", S.PENDING),  # waits: costs nothing yet
                    ("dask-worker", "small", S.FAILED),  # died: costs nothing now
                ],
            )
            # Workers on another pool, at that pool's rates; its scheduler not yet running.
            await _cluster(
                s,
                svc,
                session,
                ClusterState.STARTING,
                [("dask-scheduler", "small", S.STARTING), ("dask-worker", "a100", S.RUNNING)],
                name="gpus",
            )
            # Ended, or another session's: not this meter's.
            await _cluster(
                s, svc, session, ClusterState.STOPPED, [("dask-worker", "small", S.STOPPED)], "old"
            )
            await _cluster(
                s, svc, other, ClusterState.RUNNING, [("dask-worker", "small", S.RUNNING)], "x"
            )
        m = await _meter(svc, session)
        assert m["cost_per_hour"] == 0.15  # the session's own line is unchanged
        assert m["clusters"] == [
            {"name": "era5", "workers": 8, "cost_per_hour": 1.35},
            {"name": "gpus", "workers": 1, "cost_per_hour": 2.15},
        ]
        assert [c["name"] for c in (await _meter(svc, other))["clusters"]] == ["x"]


async def test_a_job_and_a_session_without_clusters_list_none(
    database_url: str, tmp_path: Path
) -> None:
    async with running_service(database_url, tmp_path, policy_text=POLICY) as svc:
        job = await _submit(svc)
        session = await _session(svc)
        assert (await _meter(svc, job))["clusters"] == []
        assert (await _meter(svc, session))["clusters"] == []
