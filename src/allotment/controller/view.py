"""What the controller reads from the database to schedule: the policy in force and the live
workloads, as the scheduler's ``Snapshot``.

The policy document gives allocations, limits, weights and nodes; shares come from the accounts
table, since group managers may have changed them through the API since the policy was applied.
Usage for fair share is what workloads ran (dominant share × seconds), decayed by the policy's
half-life, read from the ledger's daily totals and open charges (``usage``).

The readers take a synchronous session: the controller runs them in one hand-over
(``Database.run_read``), API routes on their async session (``AsyncSession.run_sync``).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from allotment.config.models import Policy
from allotment.config.scheduler_view import scheduler_view
from allotment.db.tables import (
    Account,
    OpenCharge,
    PolicyVersion,
    Pool,
    Profile,
    UsageDay,
    User,
    Workload,
)
from allotment.domain.ledger import day_of, day_start
from allotment.domain.resources import Resources
from allotment.domain.workloads import ACTIVE, WorkloadState
from allotment.scheduler import AccountState, Limits, NodeState, Pending, Running, Weights
from allotment.scheduler.usage import decay_factor

__all__ = [
    "LiveView",
    "PolicyView",
    "QueueCache",
    "SchedulerView",
    "ViewCache",
    "load_live",
    "load_policy_view",
    "usage",
]

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


#: What the scheduler reads of one policy (``config.scheduler_view.scheduler_view``): accounts
#: by path, nodes, limits per user, default limits, weights.
SchedulerView = tuple[dict[str, AccountState], list[NodeState], dict[str, Limits], Limits, Weights]
#: Parsed policies by version id, for one database (the caller owns the cache).
ViewCache = dict[int, tuple[Policy, SchedulerView]]


def load_policy_view(session: Session, cache: ViewCache | None = None) -> PolicyView | None:
    """The policy in force; with a ``cache``, parsed once per version (a cycle then only asks
    which version is newest)."""
    _views: ViewCache = {} if cache is None else cache
    version = session.execute(
        select(PolicyVersion.id).order_by(PolicyVersion.id.desc()).limit(1)
    ).scalar_one_or_none()
    if version is None:
        return None
    if version not in _views:
        document = session.execute(
            select(PolicyVersion.document).where(PolicyVersion.id == version)
        ).scalar_one()
        parsed = Policy.model_validate(document)
        _views.clear()
        _views[version] = (parsed, scheduler_view(parsed))
    policy, (stated, nodes, users, default, weights) = _views[version]
    result = session.execute(
        select(Account.path, Account.shares).where(Account.archived_at.is_(None))
    )
    shares = {path: n for path, n in result}
    accounts = {
        path: AccountState(path, float(shares.get(path, a.shares)), a.limits, a.allocations)
        for path, a in stated.items()
    }
    # Accounts managers created (parents first): full accounts with no limits or allocations
    # of their own, so the scheduler finds those of the accounts above them.
    for path in sorted(shares.keys() - stated.keys(), key=lambda p: p.count("/")):
        parent = path.rpartition("/")[0]
        if parent in accounts:
            accounts[path] = AccountState(path, float(shares[path]))
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


_COLUMNS = (
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
    Workload.nodes,
    User.name.label("user"),
    Account.path.label("account"),
    Pool.name.label("pool"),
    Profile.name.label("profile"),
)


@dataclass
class QueueCache:
    """The pending queue as last read, kept between cycles. Workloads that joined it since are
    read alone and added; it is read whole again only when workloads left it other than by this
    controller's own decisions (a cancel), and every ``max_age``. Re-reading a queue of
    thousands on every completion, or on every cycle of a stream of submissions, cost more than
    the cycle itself."""

    #: (newest pending id, number pending) when read, adjusted for our own decisions.
    signature: tuple[int | None, int] | None = None
    pending: list[tuple[Pending, int | None]] = field(default_factory=list)
    read_at: float = float("-inf")
    #: Re-read at least this often, whatever the signature says.
    max_age: float = 10.0
    #: How many times it was read whole.
    reads: int = 0

    def forget(self, ids: set[int]) -> None:
        """Workloads this controller took out of the queue (admitted, rejected)."""
        if not ids or self.signature is None:
            return
        newest, count = self.signature
        self.pending = [(p, a) for p, a in self.pending if p.id not in ids]
        self.signature = None if newest in ids else (newest, count - len(ids))


def _query(view: PolicyView) -> Any:
    return (
        select(*_COLUMNS)
        .join(User, User.id == Workload.user_id)
        .join(Account, Account.id == Workload.account_id)
        .join(Pool, Pool.id == Workload.pool_id)
        .outerjoin(Profile, Profile.id == Workload.profile_id)
    )


def load_live(
    session: Session, view: PolicyView, now: datetime, cache: QueueCache | None = None
) -> LiveView:
    """Pending and active workloads of the pools this view knows."""
    t_now = now.timestamp()
    live = LiveView()
    cache = cache or QueueCache()
    signature = tuple(
        session.execute(
            select(func.max(Workload.id), func.count()).where(
                Workload.status == int(WorkloadState.PENDING)
            )
        ).one()
    )
    mono = time.monotonic()
    if signature != cache.signature:
        _joined(session, view, cache, signature)
    if signature != cache.signature or mono - cache.read_at > cache.max_age:
        # Up to the signature's newest only: on PostgreSQL each statement sees what committed
        # before it, and a workload read here beyond it would be read again as a joiner.
        rows = session.execute(
            _query(view).where(
                Workload.status == int(WorkloadState.PENDING),
                Workload.id <= (signature[0] or 0),
            )
        )
        cache.pending = [
            (_pending(row, view), row.after_id)
            for row in rows
            if row.target == WorkloadState.RUNNING
        ]
        cache.signature, cache.read_at = (signature[0], signature[1]), mono
        cache.reads += 1
    rows = session.execute(_query(view).where(Workload.status.in_([int(s) for s in ACTIVE])))
    for row in rows:
        stopping = row.target >= WorkloadState.STOPPING
        if stopping and row.status != WorkloadState.STOPPING:
            live.to_stop.append(row.id)
        started = _epoch(row.started_at, t_now)
        live.running.append(
            Running(
                row.id,
                row.user,
                row.account,
                row.pool,
                row.node or "",
                _resources(row),
                started,
                started + _walltime(row),
                view.profiles.get(row.profile or "", (0.0, False))[0],
                stopping=stopping,
            )
        )
    after = {p.id: a for p, a in cache.pending if a is not None}
    if not after:
        live.pending = [p for p, _ in cache.pending]
        return live
    states = {
        i: (st, code)
        for i, st, code in session.execute(
            select(Workload.id, Workload.status, Workload.exit_code).where(
                Workload.id.in_(set(after.values()))
            )
        )
    }
    for p, dep in cache.pending:
        if dep is None:
            live.pending.append(p)
            continue
        status, code = states.get(dep, (None, None))
        if status == WorkloadState.STOPPED and code == 0:
            live.pending.append(p)
        elif status is None or status in (WorkloadState.STOPPED, WorkloadState.FAILED):
            live.doomed[p.id] = (
                f"workload {dep}, which it runs after, did not end successfully"
                if status is not None
                else f"workload {dep}, which it runs after, does not exist"
            )
        else:
            live.waiting[p.id] = f"waiting for workload {dep} to end successfully"
    return live


def _joined(
    session: Session, view: PolicyView, cache: QueueCache, signature: tuple[Any, ...]
) -> bool:
    """Add to the cached queue the workloads that joined it since it was read, when that is
    all that changed (a stream of submissions: the queue is not read whole on every cycle);
    False when something else did (a cancel, an id committed out of order), for a full read."""
    if cache.signature is None or cache.signature[0] is None or signature[0] is None:
        return False
    newest, count = cache.signature
    if signature[0] <= newest:
        return False
    rows = session.execute(
        _query(view).where(
            Workload.status == int(WorkloadState.PENDING),
            Workload.id > newest,
            Workload.id <= signature[0],  # as for the whole queue: what the signature counted
        )
    ).all()
    if count + len(rows) != signature[1]:
        return False
    cache.pending.extend(
        (_pending(row, view), row.after_id) for row in rows if row.target == WorkloadState.RUNNING
    )
    cache.signature = (signature[0], signature[1])
    return True


def _resources(row: Any) -> Resources:
    return Resources(row.millicpus, row.memory, row.gpus or {})


def _walltime(row: Any) -> float:
    return float(row.max_runtime) if row.max_runtime else DEFAULT_WALLTIME


def _pending(row: Any, view: PolicyView) -> Pending:
    priority, whole = view.profiles.get(row.profile or "", (0.0, False))
    return Pending(
        row.id,
        row.user,
        row.account,
        row.pool,
        _resources(row),
        row.created_at.timestamp(),
        _walltime(row),
        priority,
        whole,
        row.nodes,
    )


def usage(session: Session, view: PolicyView, now: datetime) -> dict[tuple[str, str], float]:
    """Decayed dominant-share seconds per (account, user), over the last ten half-lives, from
    the ledger's daily totals (``usage_days.share_seconds``, each day decayed at the age of
    its midpoint) and the open charges' share since the meter's last pass: the one record of
    what each account used, as budgets and reports read it (docs/design/0004-ledger.md)."""
    half_life = float(view.policy.scheduling.half_life)
    tz = view.policy.accounting.time_zone
    query = (
        select(UsageDay.day, Account.path, User.name, func.sum(UsageDay.share_seconds))
        .join(Account, Account.id == UsageDay.account_id)
        .join(User, User.id == UsageDay.user_id)
        .group_by(UsageDay.day, Account.path, User.name)
    )
    if half_life > 0:
        query = query.where(UsageDay.day >= day_of(now - timedelta(seconds=10 * half_life), tz))
    out: dict[tuple[str, str], float] = defaultdict(float)
    t_now = now.timestamp()
    for day, account, user, seconds in session.execute(query):
        begin = day_start(day, tz).timestamp()
        end = min(day_start(day + timedelta(days=1), tz).timestamp(), t_now)
        # Charged at its midpoint's age: exact for a day of even use, close otherwise.
        out[(account, user)] += float(seconds or 0.0) * decay_factor(
            t_now - (begin + max(end, begin)) / 2, half_life
        )
    rows = session.execute(
        select(OpenCharge.share, OpenCharge.charged_through, Account.path, User.name)
        .join(Account, Account.id == OpenCharge.account_id)
        .join(User, User.id == OpenCharge.user_id)
        .where(~OpenCharge.closed)
    )
    for share, through, account, user in rows:
        out[(account, user)] += share * max(t_now - through.timestamp(), 0.0)
    return dict(out)
