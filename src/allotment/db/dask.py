"""Queries and writes of Dask clusters (``dask_clusters``) for the API.

A cluster's name is unique among its owner's clusters that have not ended; an ended cluster
keeps its row (and its name may be used again), so a lookup by name prefers the live one and
else finds the newest that ended. Every write of a cluster's state is guarded on the states it
may come from (``UPDATE … WHERE state IN (…)``) and says whether it applied, as workloads'
writes do (``db/workloads.py``): the controller moves clusters too, and whichever writes first
wins.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, Table, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession

from allotment.db.tables import Account, DaskCluster, Pool, Profile, User, Workload
from allotment.domain.dask import ClusterState
from allotment.domain.workloads import TERMINAL, WorkloadKind, WorkloadState

__all__ = [
    "CLUSTERS",
    "ENDED",
    "LIVE",
    "ClusterRow",
    "ClusterWorkload",
    "cluster_by_name",
    "cluster_by_token",
    "cluster_made_with_key",
    "live_clusters",
    "list_clusters",
    "lock_user",
    "record_client",
    "record_report",
    "request_stop",
    "set_workers",
    "to_running",
    "workloads_of",
]

#: The table itself, for the guarded Core updates.
CLUSTERS = cast(Table, DaskCluster.__table__)
C = CLUSTERS.c
LIVE = (ClusterState.STARTING, ClusterState.RUNNING, ClusterState.STOPPING)
ENDED = (ClusterState.STOPPED, ClusterState.FAILED)
#: States in which a cluster may be told what to run (scale, adapt, the scheduler's target).
WORKING = (ClusterState.STARTING, ClusterState.RUNNING)


@dataclass(frozen=True, slots=True)
class ClusterRow:
    """A cluster with the names of its owner, account and workers' profile."""

    cluster: DaskCluster
    user: str
    account: str
    profile: str


@dataclass(frozen=True, slots=True)
class ClusterWorkload:
    """What a cluster's answer needs of one of its workloads."""

    id: int
    cluster_id: int
    kind: str
    status: WorkloadState
    target: WorkloadState
    pool: str | None
    millicpus: int
    memory: int
    gpus: dict[str, int]
    reason: str
    position: int | None
    expected_start: datetime | None

    @property
    def live(self) -> bool:
        """Not ended, and still meant to run."""
        return self.status not in TERMINAL and self.target == WorkloadState.RUNNING

    @property
    def waiting(self) -> bool:
        """Asked for and not yet running: in the queue, admitted or starting."""
        return self.live and self.status < WorkloadState.RUNNING


def _in(states: Collection[ClusterState]) -> ColumnElement[bool]:
    return C.state.in_(sorted(int(s) for s in states))


def _select() -> Any:
    return (
        select(DaskCluster, User.name, Account.path, Profile.name)
        .join(User, User.id == DaskCluster.user_id)
        .join(Account, Account.id == DaskCluster.account_id)
        .join(Profile, Profile.id == DaskCluster.profile_id)
    )


def _rows(result: Any) -> list[ClusterRow]:
    return [ClusterRow(c, u, a, p) for c, u, a, p in result]


async def lock_user(session: AsyncSession, user_id: int) -> None:
    """Hold the user's row until the transaction ends: two creations by one user are checked
    (how many clusters, which names) one after the other. SQLite's writes are serial anyway."""
    await session.execute(select(User.id).where(User.id == user_id).with_for_update())


async def live_clusters(session: AsyncSession, user_id: int) -> list[str]:
    """Names of the user's clusters that have not ended."""
    rows = await session.execute(
        select(DaskCluster.name).where(DaskCluster.user_id == user_id, _in(LIVE))
    )
    return [name for (name,) in rows]


async def cluster_by_name(session: AsyncSession, user_id: int, name: str) -> ClusterRow | None:
    """The user's live cluster called ``name``, else the newest of that name that ended."""
    rows = _rows(
        await session.execute(
            _select()
            .where(DaskCluster.user_id == user_id, DaskCluster.name == name)
            .order_by((DaskCluster.state >= int(ClusterState.STOPPED)).asc(), DaskCluster.id.desc())
            .limit(1)
        )
    )
    return rows[0] if rows else None


async def cluster_made_with_key(
    session: AsyncSession, user_id: int, key: str
) -> ClusterRow | int | None:
    """What the user's earlier request with idempotency key ``key`` made: the cluster (the key
    is kept on its scheduler's workload), the id of a workload that is no cluster's
    scheduler (the key was used to submit that), or None: nothing yet."""
    found = (
        await session.execute(
            select(Workload.id, Workload.kind, Workload.cluster_id).where(
                Workload.user_id == user_id, Workload.idempotency_key == key
            )
        )
    ).first()
    if found is None:
        return None
    wid, kind, cluster_id = found
    if kind != WorkloadKind.DASK_SCHEDULER or cluster_id is None:
        return int(wid)
    rows = _rows(await session.execute(_select().where(DaskCluster.id == cluster_id)))
    return rows[0] if rows else int(wid)


async def cluster_by_token(session: AsyncSession, token_sha256: str) -> DaskCluster | None:
    return (
        await session.execute(select(DaskCluster).where(DaskCluster.token_sha256 == token_sha256))
    ).scalar_one_or_none()


async def list_clusters(
    session: AsyncSession, user_id: int, *, ended: bool, limit: int = 1000
) -> list[ClusterRow]:
    """A user's clusters, newest first: those that have not ended, and with ``ended`` the
    others too."""
    query = _select().where(DaskCluster.user_id == user_id)
    if not ended:
        query = query.where(_in(LIVE))
    return _rows(await session.execute(query.order_by(DaskCluster.id.desc()).limit(limit)))


async def workloads_of(
    session: AsyncSession, cluster_ids: Sequence[int]
) -> dict[int, list[ClusterWorkload]]:
    """The scheduler and workers of each cluster, oldest first."""
    out: dict[int, list[ClusterWorkload]] = {i: [] for i in cluster_ids}
    if not cluster_ids:
        return out
    rows = await session.execute(
        select(
            Workload.id,
            Workload.cluster_id,
            Workload.kind,
            Workload.status,
            Workload.target,
            Pool.name,
            Workload.millicpus,
            Workload.memory,
            Workload.gpus,
            Workload.reason,
            Workload.position,
            Workload.expected_start,
        )
        .outerjoin(Pool, Pool.id == Workload.pool_id)
        .where(Workload.cluster_id.in_(list(cluster_ids)))
        .order_by(Workload.id)
    )
    for r in rows:
        cluster = int(r[1])
        out.setdefault(cluster, []).append(
            ClusterWorkload(
                id=r[0],
                cluster_id=cluster,
                kind=r[2],
                status=WorkloadState(r[3]),
                target=WorkloadState(r[4]),
                pool=r[5],
                millicpus=r[6],
                memory=r[7],
                gpus=dict(r[8] or {}),
                reason=r[9],
                position=r[10],
                expected_start=r[11],
            )
        )
    return out


async def _applied(session: AsyncSession, statement: Any) -> bool:
    result = cast(CursorResult[Any], await session.execute(statement))
    return bool(result.rowcount)


async def set_workers(
    session: AsyncSession,
    cluster_id: int,
    workers: int,
    adapt: tuple[int, int] | None,
    now: datetime,
) -> bool:
    """Run ``workers`` (``scale``; adaptive scaling off), or adapt within ``adapt``'s
    (minimum, maximum) starting from ``workers``, while the cluster starts or runs."""
    minimum, maximum = adapt if adapt is not None else (None, None)
    return await _applied(
        session,
        update(CLUSTERS)
        .where(C.id == cluster_id, _in(WORKING))
        .values(workers=workers, adapt_minimum=minimum, adapt_maximum=maximum, updated_at=now),
    )


async def request_stop(session: AsyncSession, cluster_id: int, reason: str, now: datetime) -> bool:
    """STARTING or RUNNING → STOPPING, saying why: the controller stops its workers, then its
    scheduler, then ends it."""
    return await _applied(
        session,
        update(CLUSTERS)
        .where(C.id == cluster_id, _in(WORKING))
        .values(state=int(ClusterState.STOPPING), reason=reason, updated_at=now),
    )


async def record_client(session: AsyncSession, cluster_id: int, now: datetime) -> bool:
    """The client object that owns it is alive (its heartbeat), while the cluster is live."""
    return await _applied(
        session,
        update(CLUSTERS)
        .where(C.id == cluster_id, _in(LIVE))
        .values(client_seen_at=now, updated_at=now),
    )


async def to_running(session: AsyncSession, cluster_id: int, now: datetime) -> bool:
    """STARTING → RUNNING: its scheduler has reported its address."""
    return await _applied(
        session,
        update(CLUSTERS)
        .where(C.id == cluster_id, _in([ClusterState.STARTING]))
        .values(state=int(ClusterState.RUNNING), reason="", updated_at=now),
    )


async def record_report(
    session: AsyncSession,
    cluster_id: int,
    *,
    address: str,
    dashboard: str | None,
    idle_since: datetime | None,
    idle_workers: list[int],
    workers: int | None,
    now: datetime,
) -> bool:
    """What its scheduler reported, while the cluster is live: where it listens, since when
    it is idle, the workers it would close first, and (adaptive) the workers it asks for,
    already clamped. ``workers`` None leaves them alone; so does a cluster that is stopping."""
    values: dict[str, Any] = {
        "address": address,
        "dashboard": dashboard,
        "idle_since": idle_since,
        "idle_workers": idle_workers,
        "scheduler_seen_at": now,
        "updated_at": now,
    }
    applied = await _applied(
        session, update(CLUSTERS).where(C.id == cluster_id, _in(LIVE)).values(**values)
    )
    if applied and workers is not None:
        await _applied(
            session,
            update(CLUSTERS)
            .where(C.id == cluster_id, _in(WORKING), C.adapt_maximum.is_not(None))
            .values(workers=workers),
        )
    return applied
