"""The controller's reads and writes of Dask clusters (``dask_clusters``) and their workloads.

The controller's loop (``controller/dask_clusters.py``) reads every cluster that has not ended
with the workloads that decide its fate (``live_clusters``), decides, and writes in one
transaction: a cluster's move (guarded, as ``db/dask.py``'s are: whichever of the API and the
controller writes first wins), the workers it adds (``insert_workers``: counted and inserted
in the same transaction, so no crash or restart ever makes two workers for one slot) and the
workloads it stops (``db.workloads.request_stop``). The meter reads a session's clusters here
too (``session_clusters``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, and_, insert, or_, select, update
from sqlalchemy.orm import Session

from allotment.config.models import PoolSpec, ProfileSpec
from allotment.db.dask import CLUSTERS, ENDED, LIVE, C
from allotment.db.tables import (
    WORKLOADS,
    Account,
    DaskCluster,
    Membership,
    Pool,
    Profile,
    Workload,
)
from allotment.domain.accounts import is_within
from allotment.domain.dask import ClusterState
from allotment.domain.dask_commands import worker_launch
from allotment.domain.submission import WAITING
from allotment.domain.workloads import TERMINAL, WorkloadKind, WorkloadState

__all__ = [
    "ClusterFacts",
    "Member",
    "SessionCluster",
    "insert_workers",
    "live_clusters",
    "orphans",
    "session_clusters",
    "to_ended",
    "to_stopping",
]

_DASK_KINDS = (WorkloadKind.DASK_SCHEDULER, WorkloadKind.DASK_WORKER)


@dataclass(frozen=True, slots=True)
class Member:
    """One workload of a cluster: its scheduler or a worker."""

    id: int
    kind: str
    status: WorkloadState
    target: WorkloadState
    reason: str
    started_at: datetime | None
    ended_at: datetime | None

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL

    @property
    def live(self) -> bool:
        """Not ended and still meant to run (not told to stop)."""
        return not self.ended and self.target == WorkloadState.RUNNING


@dataclass(frozen=True, slots=True)
class ClusterFacts:
    """A cluster that has not ended, with what the controller decides from."""

    id: int
    name: str
    user_id: int
    account_id: int
    profile_id: int
    state: ClusterState
    reason: str
    #: ``{"cpus", "memory", "gpus", "threads"}`` of each worker.
    worker: dict[str, Any]
    python: str
    #: Workers asked for.
    workers: int
    scheduler_id: int | None
    session_id: int | None
    shutdown_on_close: bool
    address: str | None
    client_seen_at: datetime | None
    idle_since: datetime | None
    created_at: datetime
    #: Its session's status and end (None, None: it has no session, or the session is gone).
    session_status: WorkloadState | None
    session_ended_at: datetime | None
    #: Its scheduler, its workers that have not ended, and those that ended lately (the
    #: controller looks for workers that keep failing), oldest first.
    members: tuple[Member, ...]
    #: Its scheduler's last report (None: none yet).
    scheduler_seen_at: datetime | None = None
    #: Worker workloads its scheduler would close first (idle, little data), best first.
    idle_workers: tuple[int, ...] = ()
    #: Its owner may still charge its account (a member of it or a manager above it, or an
    #: administrator when it was made; the account not archived).
    may_charge: bool = True
    #: Secrets: never in a repr, a log or an answer but the owner's credentials.
    tls_cert: str = field(repr=False, default="")
    tls_key: str = field(repr=False, default="")

    @property
    def scheduler(self) -> Member | None:
        """Its scheduler's workload (the one named, else the newest of its kind)."""
        named = [m for m in self.members if m.id == self.scheduler_id]
        kind = [m for m in self.members if m.kind == WorkloadKind.DASK_SCHEDULER]
        found = named or kind
        return found[-1] if found else None

    @property
    def live_workers(self) -> list[Member]:
        return [m for m in self.members if m.kind == WorkloadKind.DASK_WORKER and m.live]


def live_clusters(session: Session, now: datetime, recent: float = 600.0) -> list[ClusterFacts]:
    """Every cluster that has not ended, with its scheduler, its workers that have not ended
    and those that ended in the last ``recent`` seconds."""
    clusters = session.execute(
        select(DaskCluster).where(C.state.in_([int(s) for s in LIVE])).order_by(DaskCluster.id)
    ).scalars()
    found = list(clusters)
    if not found:
        return []
    ids = [c.id for c in found]
    since = now - timedelta(seconds=recent)
    rows = session.execute(
        select(
            Workload.id,
            Workload.cluster_id,
            Workload.kind,
            Workload.status,
            Workload.target,
            Workload.reason,
            Workload.started_at,
            Workload.ended_at,
        )
        .where(
            Workload.cluster_id.in_(ids),
            or_(
                Workload.status.in_([int(s) for s in WorkloadState if s not in TERMINAL]),
                Workload.kind == WorkloadKind.DASK_SCHEDULER,
                Workload.ended_at >= since,
            ),
        )
        .order_by(Workload.id)
    )
    members: dict[int, list[Member]] = {i: [] for i in ids}
    for wid, cid, kind, status, target, reason, started, ended in rows:
        members[cast(int, cid)].append(
            Member(
                wid,
                kind,
                WorkloadState(status),
                WorkloadState(target),
                reason,
                started,
                ended,
            )
        )
    charging = _may_charge(session, found)
    owners = [c.session_id for c in found if c.session_id is not None]
    sessions = {
        wid: (WorkloadState(status), ended)
        for wid, status, ended in session.execute(
            select(Workload.id, Workload.status, Workload.ended_at).where(Workload.id.in_(owners))
        )
    }
    out = []
    for c in found:
        owner = sessions.get(c.session_id) if c.session_id is not None else None
        out.append(
            ClusterFacts(
                id=c.id,
                name=c.name,
                user_id=c.user_id,
                account_id=c.account_id,
                profile_id=c.profile_id,
                state=ClusterState(c.state),
                reason=c.reason,
                worker=dict(c.worker or {}),
                python=c.python,
                workers=c.workers,
                scheduler_id=c.scheduler_id,
                session_id=c.session_id,
                shutdown_on_close=c.shutdown_on_close,
                address=c.address,
                client_seen_at=c.client_seen_at,
                idle_since=c.idle_since,
                created_at=c.created_at,
                session_status=owner[0] if owner else None,
                session_ended_at=owner[1] if owner else None,
                scheduler_seen_at=c.scheduler_seen_at,
                idle_workers=tuple(int(i) for i in c.idle_workers or ()),
                may_charge=c.id in charging,
                members=tuple(members[c.id]),
                tls_cert=c.tls_cert,
                tls_key=c.tls_key,
            )
        )
    return out


def _may_charge(session: Session, found: list[DaskCluster]) -> set[int]:
    """The clusters (of ``found``) whose owner may still charge their account, as
    ``Principal.can_submit_to`` decides: a member or manager of it, or a manager of an account
    above it; an administrator's cluster always (its right came from the hub's scopes, which
    the controller cannot see); and never on an archived account."""
    accounts = {
        aid: (path, archived)
        for aid, path, archived in session.execute(
            select(Account.id, Account.path, Account.archived_at.is_not(None)).where(
                Account.id.in_({c.account_id for c in found})
            )
        )
    }
    held: dict[int, list[tuple[str, str]]] = {}
    for uid, path, role in session.execute(
        select(Membership.user_id, Account.path, Membership.role)
        .join(Account, Account.id == Membership.account_id)
        .where(Membership.user_id.in_({c.user_id for c in found}))
    ):
        held.setdefault(uid, []).append((path, role))
    out = set()
    for c in found:
        path, archived = accounts.get(c.account_id, ("", True))
        if archived:
            continue
        roles = held.get(c.user_id, [])
        direct = any(p == path and r in ("member", "manager") for p, r in roles)
        above = any(r == "manager" and is_within(path, p) for p, r in roles)
        if c.admin or direct or above:
            out.add(c.id)
    return out


def orphans(session: Session) -> list[int]:
    """Dask workloads still meant to run whose cluster has ended (or that name none): nothing
    runs that no cluster accounts for."""
    return list(
        session.execute(
            select(Workload.id)
            .outerjoin(DaskCluster, DaskCluster.id == Workload.cluster_id)
            .where(
                # Named states, not "not ended": the index on status finds the few.
                Workload.status.in_([int(s) for s in WorkloadState if s not in TERMINAL]),
                Workload.kind.in_([str(k) for k in _DASK_KINDS]),
                Workload.target == int(WorkloadState.RUNNING),
                or_(DaskCluster.id.is_(None), DaskCluster.state.in_([int(s) for s in ENDED])),
            )
            .order_by(Workload.id)
        ).scalars()
    )


def to_stopping(conn: Connection, cluster_id: int, reason: str, now: datetime) -> bool:
    """STARTING or RUNNING → STOPPING, saying why; False when it was already elsewhere."""
    working = [int(ClusterState.STARTING), int(ClusterState.RUNNING)]
    return bool(
        conn.execute(
            update(CLUSTERS)
            .where(C.id == cluster_id, C.state.in_(working))
            .values(state=int(ClusterState.STOPPING), reason=reason, updated_at=now)
        ).rowcount
    )


def to_ended(conn: Connection, cluster_id: int, state: ClusterState, now: datetime) -> bool:
    """STOPPING → STOPPED or FAILED, for good: every workload of it has ended."""
    if not state.ended:
        raise ValueError(f"a cluster ends as stopped or failed, not {state.label}")
    ended = conn.execute(
        update(CLUSTERS)
        .where(C.id == cluster_id, C.state == int(ClusterState.STOPPING))
        # Its key is needed no more (credentials are refused once it has ended): it goes.
        .values(state=int(state), ended_at=now, updated_at=now, tls_key="")
    ).rowcount
    if ended:
        # Nor do its workloads' environments (the key, the scheduler's token): every one of
        # them has ended, and none starts again.
        conn.execute(
            update(WORKLOADS)
            .where(
                WORKLOADS.c.cluster_id == cluster_id,
                WORKLOADS.c.status.in_([int(s) for s in TERMINAL]),
            )
            .values(env=None)
        )
    return bool(ended)


def _gpus(profile: ProfileSpec, pool: dict[str, Any], count: int) -> dict[str, int]:
    """``count`` GPUs of the model the profile names, else of the pool's first GPU model."""
    if count <= 0:
        return {}
    size = profile.size.gpus
    models = list(size) if isinstance(size, dict) else []
    for node in PoolSpec.model_validate(pool).nodes:
        models.extend(node.gpus or {})
    return {models[0]: count} if models else {}


def insert_workers(conn: Connection, cluster: ClusterFacts, count: int, now: datetime) -> int:
    """``count`` new workers of ``cluster``, waiting for the scheduler (in the caller's
    transaction, with the count it read: a crash before the commit makes none); how many
    were inserted (none where its profile is gone or it has no address yet)."""
    if count <= 0 or cluster.address is None:
        return 0
    found = conn.execute(
        select(Profile.id, Profile.spec, Pool.id, Pool.spec)
        .join(Pool, Pool.id == Profile.pool_id)
        .where(Profile.id == cluster.profile_id)
    ).first()
    if found is None:
        return 0
    profile_id, profile_spec, pool_id, pool_spec = found
    spec = ProfileSpec.model_validate(profile_spec)
    w = cluster.worker
    cpus = float(w.get("cpus", 1.0))
    memory = int(w.get("memory", 0))
    gpus = int(w.get("gpus", 0))
    launch = worker_launch(
        cluster_id=cluster.id,
        name=cluster.name,
        python=cluster.python,
        address=cluster.address,
        tls_cert=cluster.tls_cert,
        tls_key=cluster.tls_key,
        cpus=cpus,
        memory=memory,
        threads=int(w.get("threads", 0)),
        gpus=gpus,
    )
    row = {
        "kind": str(WorkloadKind.DASK_WORKER),
        "name": f"{cluster.name}-worker",
        "user_id": cluster.user_id,
        "account_id": cluster.account_id,
        "pool_id": pool_id,
        "profile_id": profile_id,
        "millicpus": round(cpus * 1000),
        "memory": memory,
        "gpus": _gpus(spec, pool_spec, gpus),
        "command": launch.command,
        "env": launch.env,
        "max_runtime": spec.max_runtime or None,
        "cluster_id": cluster.id,
        "target": int(WorkloadState.RUNNING),
        "status": int(WorkloadState.PENDING),
        "reason": WAITING,
        "nodes": 1,
        "created_at": now,
        "updated_at": now,
    }
    conn.execute(insert(WORKLOADS), [dict(row) for _ in range(count)])
    return count


@dataclass(frozen=True, slots=True)
class SessionCluster:
    """A cluster a session owns, as its meter shows it: what runs and where."""

    name: str
    #: (pool, millicpus, memory, gpus, is a worker) of each running workload of it.
    running: tuple[tuple[str, int, int, dict[str, int], bool], ...]


def session_clusters(session: Session, session_id: int) -> list[SessionCluster]:
    """The clusters ``session_id`` owns that have not ended and have something running."""
    rows = session.execute(
        select(
            DaskCluster.id,
            DaskCluster.name,
            Pool.name,
            Workload.millicpus,
            Workload.memory,
            Workload.gpus,
            Workload.kind,
        )
        .join(
            Workload,
            and_(
                Workload.cluster_id == DaskCluster.id,
                Workload.status == int(WorkloadState.RUNNING),
            ),
        )
        .join(Pool, Pool.id == Workload.pool_id)
        .where(
            DaskCluster.session_id == session_id,
            C.state.in_([int(s) for s in LIVE]),
        )
        .order_by(DaskCluster.id, Workload.id)
    )
    found: dict[int, tuple[str, list[tuple[str, int, int, dict[str, int], bool]]]] = {}
    for cid, name, pool, mc, mem, gpus, kind in rows:
        found.setdefault(cid, (name, []))[1].append(
            (pool, mc, mem, dict(gpus or {}), kind == WorkloadKind.DASK_WORKER)
        )
    return [SessionCluster(name, tuple(run)) for name, run in found.values()]
