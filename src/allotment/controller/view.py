"""What the controller reads from the database to schedule: the policy in force and the live
workloads, as the scheduler's ``Snapshot``.

The policy document gives allocations, limits, weights and nodes; shares come from the accounts
table, since group managers may have changed them through the API since the policy was applied.
Usage for fair share is what workloads ran (dominant share × seconds), decayed by the policy's
half-life, counted from the workloads table until the ledger (a later issue) takes over.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from allotment.config.models import Policy
from allotment.db.tables import Account, PolicyVersion, Pool, Profile, User, Workload
from allotment.domain.resources import Resources
from allotment.domain.workloads import WorkloadState
from allotment.scheduler import AccountState, Limits, NodeState, Pending, Running, Weights
from allotment.scheduler.usage import decay_factor, dominant_share
from allotment.sim.what_if import scheduler_view

__all__ = [
    "ACTIVE",
    "LiveView",
    "PolicyView",
    "ViewCache",
    "load_live",
    "load_policy_view",
    "usage",
]

#: States in which a workload holds resources.
ACTIVE = (
    WorkloadState.ADMITTED,
    WorkloadState.STARTING,
    WorkloadState.RUNNING,
    WorkloadState.STOPPING,
)
#: Walltime assumed for backfill when neither the workload nor its profile gives one.
DEFAULT_WALLTIME = 24 * 3600.0


@dataclass(frozen=True)
class PolicyView:
    policy: Policy
    accounts: dict[str, AccountState]
    nodes: list[NodeState]
    user_limits: dict[str, Limits]
    default_limits: Limits
    weights: Weights
    #: Pool name → backend name.
    backends: dict[str, str]
    #: Profile name → (priority, whole node).
    profiles: dict[str, tuple[float, bool]]


#: Parsed policies by version id, for one database (the caller owns the cache).
ViewCache = dict[int, tuple[Policy, tuple[Any, ...]]]


async def load_policy_view(
    session: AsyncSession, cache: ViewCache | None = None
) -> PolicyView | None:
    """The policy in force; with a ``cache``, parsed once per version (a cycle then only asks
    which version is newest)."""
    _views: ViewCache = {} if cache is None else cache
    version = (
        await session.execute(select(PolicyVersion.id).order_by(PolicyVersion.id.desc()).limit(1))
    ).scalar_one_or_none()
    if version is None:
        return None
    if version not in _views:
        document = (
            await session.execute(select(PolicyVersion.document).where(PolicyVersion.id == version))
        ).scalar_one()
        parsed = Policy.model_validate(document)
        _views.clear()
        _views[version] = (parsed, scheduler_view(parsed))
    policy, (accounts, nodes, users, default, weights) = _views[version]
    result = await session.execute(
        select(Account.path, Account.shares).where(Account.archived_at.is_(None))
    )
    shares = {path: n for path, n in result.tuples()}
    accounts = {
        path: AccountState(path, float(shares.get(path, a.shares)), a.limits, a.allocations)
        for path, a in accounts.items()
    }
    return PolicyView(
        policy,
        accounts,
        nodes,
        users,
        default,
        weights,
        {name: spec.backend for name, spec in policy.pools.items()},
        {name: (float(spec.priority), spec.whole_node) for name, spec in policy.profiles.items()},
    )


@dataclass
class LiveView:
    pending: list[Pending] = field(default_factory=list)
    running: list[Running] = field(default_factory=list)
    #: Pending workloads waiting on another (id → reason), and those whose dependency failed.
    waiting: dict[int, str] = field(default_factory=dict)
    doomed: dict[int, str] = field(default_factory=dict)
    #: Active workloads told to stop that have not begun stopping.
    to_stop: list[int] = field(default_factory=list)


def _epoch(t: datetime | None, default: float) -> float:
    return t.timestamp() if t is not None else default


async def load_live(session: AsyncSession, view: PolicyView, now: datetime) -> LiveView:
    """Pending and active workloads of the pools this view knows."""
    t_now = now.timestamp()
    # Plain columns, not mapped objects: this runs on every cycle over the whole queue.
    rows = await session.execute(
        select(
            Workload.id,
            Workload.status,
            Workload.target,
            Workload.millicpus,
            Workload.memory,
            Workload.gpus,
            Workload.max_runtime,
            Workload.created_at,
            Workload.started_at,
            Workload.after_id,
            Workload.node,
            User.name,
            Account.path,
            Pool.name,
            Profile.name,
        )
        .join(User, User.id == Workload.user_id)
        .join(Account, Account.id == Workload.account_id)
        .join(Pool, Pool.id == Workload.pool_id)
        .outerjoin(Profile, Profile.id == Workload.profile_id)
        .where(Workload.status.in_([WorkloadState.PENDING, *ACTIVE]))
    )
    live = LiveView()
    after: dict[int, int] = {}
    for (
        wid,
        status,
        target,
        mc,
        mem,
        gpus,
        max_runtime,
        created,
        started_at,
        after_id,
        node,
        user,
        account,
        pool,
        profile,
    ) in rows.tuples():
        r = Resources(mc, mem, gpus or {})
        priority, whole = view.profiles.get(profile or "", (0.0, False))
        wall = float(max_runtime) if max_runtime else DEFAULT_WALLTIME
        if status == WorkloadState.PENDING:
            if target != WorkloadState.RUNNING:
                continue
            p = Pending(wid, user, account, pool, r, created.timestamp(), wall, priority, whole)
            if after_id is not None:
                after[wid] = after_id
            live.pending.append(p)
        else:
            if target >= WorkloadState.STOPPING and status != WorkloadState.STOPPING:
                live.to_stop.append(wid)
            started = _epoch(started_at, t_now)
            live.running.append(
                Running(
                    wid,
                    user,
                    account,
                    pool,
                    node or "",
                    r,
                    started,
                    started + wall,
                    priority,
                    stopping=target >= WorkloadState.STOPPING,
                )
            )
    if after:
        states = {
            i: (s, c)
            for i, s, c in (
                await session.execute(
                    select(Workload.id, Workload.status, Workload.exit_code).where(
                        Workload.id.in_(set(after.values()))
                    )
                )
            ).tuples()
        }
        keep = []
        for p in live.pending:
            dep = after.get(p.id)
            if dep is None:
                keep.append(p)
                continue
            status, code = states.get(dep, (None, None))
            if status == WorkloadState.STOPPED and code == 0:
                keep.append(p)
            elif status is None or status in (WorkloadState.STOPPED, WorkloadState.FAILED):
                live.doomed[p.id] = (
                    f"workload {dep}, which it runs after, did not end successfully"
                    if status is not None
                    else f"workload {dep}, which it runs after, does not exist"
                )
            else:
                live.waiting[p.id] = f"waiting for workload {dep} to end successfully"
        live.pending = keep
    return live


async def usage(
    session: AsyncSession, view: PolicyView, now: datetime
) -> dict[tuple[str, str], float]:
    """Decayed dominant-share seconds per (account, user), over the last ten half-lives."""
    half_life = float(view.policy.scheduling.half_life)
    capacity: dict[str, Resources] = defaultdict(Resources)
    for n in view.nodes:
        capacity[n.pool] = capacity[n.pool] + n.capacity
    t_now = now.timestamp()
    horizon = t_now - 10 * half_life if half_life > 0 else float("-inf")
    rows = await session.execute(
        select(
            Workload.millicpus,
            Workload.memory,
            Workload.gpus,
            Workload.started_at,
            Workload.ended_at,
            User.name,
            Account.path,
            Pool.name,
        )
        .join(User, User.id == Workload.user_id)
        .join(Account, Account.id == Workload.account_id)
        .join(Pool, Pool.id == Workload.pool_id)
        .where(Workload.started_at.is_not(None))
    )
    out: dict[tuple[str, str], float] = defaultdict(float)
    for mc, mem, gpus, started, ended, user, account, pool in rows.tuples():
        end = _epoch(ended, t_now)
        if end < horizon or pool not in capacity:
            continue
        start = _epoch(started, t_now)
        share = dominant_share(Resources(mc, mem, gpus or {}), capacity[pool])
        # Charged at its midpoint's age: exact for short runs, close for long ones.
        age = t_now - (start + end) / 2
        out[(account, user)] += share * max(end - start, 0.0) * decay_factor(age, half_life)
    return dict(out)
