"""The quote shown before a launch: what is free, the expected wait and place, the cost per
hour, and the budget and quota left (DESIGN §5).

The expected start is the scheduler's own projection (``scheduler.projection``) run on what
the pool holds now with the new workload placed behind everything already waiting: with fair
share it may well be admitted sooner, never (short of new arrivals with more priority) later.
Spending is counted from the workloads table: requested resources × wall time at the pool's
rates (DESIGN §5's rule for the ledger; there is no ledger table, so the workloads are the record).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from allotment.config.models import Policy
from allotment.config.resolve import account_paths, resolve_account
from allotment.db.tables import Account, Pool, Workload
from allotment.domain.accounts import is_within
from allotment.domain.costs import Rates, overlap_hours, period_start
from allotment.domain.resources import Resources
from allotment.scheduler import NodeState, Pending
from allotment.scheduler.projection import project
from allotment.scheduler.usage import subtract
from allotment.schemas import BudgetLeft, ProfileQuote, QuotaLeft

from .view import DEFAULT_WALLTIME, LiveView, PolicyView

__all__ = ["BudgetBook", "QuoteRequest", "quote_profiles", "rates_of"]

_ADJECTIVE = {
    "day": "daily",
    "week": "weekly",
    "month": "monthly",
    "quarter": "quarterly",
    "year": "yearly",
}
#: Held workloads placed exactly before the quoted one; beyond, the fluid estimate.
EXACT = 200


@dataclass(frozen=True, slots=True)
class QuoteRequest:
    name: str
    display_name: str
    description: str
    pool: str
    environment: str
    size: Resources
    walltime: float | None
    whole_node: bool = False


@dataclass
class _Node:
    spec: NodeState
    free: Resources
    releases: list[tuple[float, Resources]] = field(default_factory=list)


def rates_of(policy: Policy, pool: str) -> Rates:
    spec = policy.pools[pool].rates
    return Rates(float(spec.cpu), float(spec.memory), {k: float(v) for k, v in spec.gpu.items()})


def _nodes(view: PolicyView, live: LiveView, pool: str, now: float) -> list[_Node]:
    nodes = {n.name: _Node(n, n.capacity) for n in view.nodes if n.pool == pool}
    for r in live.running:
        node = nodes.get(r.node)
        if r.pool != pool or node is None:
            continue
        node.free = subtract(node.free, r.resources)
        node.releases.append((max(r.expected_end, now), r.resources))
    return list(nodes.values())


async def _spent(
    session: AsyncSession, pool_id: int, root: str, since: datetime, now: datetime, rates: Rates
) -> float:
    """What the subtree of ``root`` spent on the pool since ``since``."""
    rows = await session.execute(
        select(
            Workload.millicpus,
            Workload.memory,
            Workload.gpus,
            Workload.started_at,
            Workload.ended_at,
            Account.path,
        )
        .join(Account, Account.id == Workload.account_id)
        .where(
            Workload.pool_id == pool_id,
            Workload.started_at.is_not(None),
            or_(Workload.ended_at.is_(None), Workload.ended_at > since),
        )
    )
    total = 0.0
    for mc, mem, gpus, started, ended, path in rows:
        if is_within(path, root):
            hours = overlap_hours(started, ended, since, now)
            total += rates.hourly(Resources(mc, mem, gpus or {})) * hours
    return total


class BudgetBook:
    """The budgets over an account on a pool, spending read once per allocation."""

    def __init__(self, session: AsyncSession, policy: Policy, now: datetime) -> None:
        self.session, self.policy, self.now = session, policy, now
        self.paths = account_paths(policy)
        self._spent: dict[tuple[str, str], float] = {}
        self._pool_ids: dict[str, int] | None = None

    async def _spent_by(self, root: str, pool: str, since: datetime) -> float:
        if (root, pool) not in self._spent:
            if self._pool_ids is None:
                rows = await self.session.execute(select(Pool.name, Pool.id))
                self._pool_ids = {name: i for name, i in rows}
            self._spent[(root, pool)] = await _spent(
                self.session,
                self._pool_ids[pool],
                root,
                since,
                self.now,
                rates_of(self.policy, pool),
            )
        return self._spent[(root, pool)]

    async def tightest(
        self, account: str, pool: str, hourly: float
    ) -> tuple[BudgetLeft | None, str | None]:
        """The budget with the least left over ``account`` on ``pool``, and why new work is
        held, if a hard stop holds it."""
        budget: BudgetLeft | None = None
        blocked = None
        for alloc in self.policy.allocations:
            name = resolve_account(self.policy, alloc.account)
            root = self.paths.get(name) if name else None
            if alloc.pool != pool or root is None or alloc.budget is None:
                continue
            if not is_within(account, root):
                continue
            spent = await self._spent_by(root, pool, period_start(self.now, alloc.budget.period))
            left = float(alloc.budget.amount) - spent
            candidate = BudgetLeft(
                account=root,
                period=alloc.budget.period,
                amount=float(alloc.budget.amount),
                spent=round(spent, 6),
                left=round(left, 6),
                hours_left=max(left, 0.0) / hourly if hourly > 0 else None,
                hard_stop=alloc.budget.hard_stop,
            )
            if budget is None or candidate.left < budget.left:
                budget = candidate
            if left <= 0 and alloc.budget.hard_stop:
                blocked = f"the {_ADJECTIVE[alloc.budget.period]} budget of {root} is spent"
        return budget, blocked


async def quote_profiles(
    session: AsyncSession,
    view: PolicyView,
    live: LiveView,
    requests: Sequence[QuoteRequest],
    account: str,
    now: datetime,
) -> list[ProfileQuote]:
    """One quote per request, for a workload charged to ``account`` (a path)."""
    t_now = now.timestamp()
    policy = view.policy
    paths = account_paths(policy)
    queues: dict[str, list[Pending]] = defaultdict(list)
    for p in live.pending:
        queues[p.pool].append(p)
    in_use: dict[tuple[str, str], Resources] = defaultdict(Resources)  # (pool, account)
    for r in live.running:
        in_use[(r.pool, r.account)] = in_use[(r.pool, r.account)] + r.resources
    budgets = BudgetBook(session, policy, now)
    out: list[ProfileQuote] = []
    for req in requests:
        nodes = _nodes(view, live, req.pool, t_now)
        size = req.size
        if req.whole_node and nodes:
            size = max((n.spec.capacity for n in nodes), key=lambda c: (c.millicpus, c.memory))
        queue = sorted(queues.get(req.pool, []), key=lambda p: (p.submitted, p.id))
        walltime = req.walltime or DEFAULT_WALLTIME
        me = Pending(-1, "", account, req.pool, size, t_now, walltime)
        held = [*queue, me]
        eta = project(held, nodes, t_now, min(len(held), EXACT))[-1]
        starts_now = eta is not None and eta <= t_now
        free = Resources()
        for n in nodes:
            free = free + Resources(
                max(n.free.millicpus, 0),
                max(n.free.memory, 0),
                {m: c for m, c in n.free.gpus.items() if c > 0},
            )
        rates = rates_of(policy, req.pool)
        hourly = rates.hourly(size)
        budget, blocked = await budgets.tightest(account, req.pool, hourly)
        quota = None
        for alloc in policy.allocations:
            name = resolve_account(policy, alloc.account)
            root = paths.get(name) if name else None
            if alloc.pool != req.pool or root is None or not is_within(account, root):
                continue
            held_now = Resources()
            for (pool, acct), res in in_use.items():
                if pool == req.pool and is_within(acct, root):
                    held_now = held_now + res
            q = alloc.quota
            left_q = subtract(subtract(Resources.of(q.cpus, q.memory, q.gpus), held_now), size)
            if q.cpus or q.memory or q.gpus:
                quota = QuotaLeft(
                    account=root,
                    cpus=left_q.cpus,
                    memory=left_q.memory,
                    gpus={m: n for m, n in left_q.gpus.items() if m in q.gpus},
                )
        out.append(
            ProfileQuote(
                profile=req.name,
                display_name=req.display_name or req.name,
                description=req.description,
                pool=req.pool,
                environment=req.environment,
                cpus=size.cpus,
                memory=size.memory,
                gpus=dict(size.gpus),
                free_cpus=free.cpus,
                free_memory=free.memory,
                free_gpus=dict(free.gpus),
                starts_now=starts_now and blocked is None,
                queued=len(queue),
                position=None if starts_now else len(queue) + 1,
                expected_start=None if eta is None else datetime.fromtimestamp(eta, UTC),
                wait_seconds=None if eta is None else max(eta - t_now, 0.0),
                cost_per_hour=round(hourly, 6),
                budget=budget,
                quota=quota,
                blocked=blocked,
            )
        )
    return out
