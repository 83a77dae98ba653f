"""The quote shown before a launch: what is free, the expected wait and place, the cost per
hour, and the budget and quota left (DESIGN §5).

The expected start is the scheduler's own projection (``scheduler.projection``) run on what
the pool holds now with the new workload placed behind everything already waiting: with fair
share it may well be admitted sooner, never (short of new arrivals with more priority) later.
Spending is the ledger's: the budgets in force with their daily totals (``db.budgets``), one
grouped query, the same numbers the scheduler holds work against and the meter shows.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from allotment.config.models import Policy
from allotment.config.resolve import account_paths, resolve_account
from allotment.db.budgets import budgets_in_force
from allotment.domain.accounts import is_within
from allotment.domain.budgets import (
    MICROS,
    BudgetStatus,
    ask_text,
    beyond_text,
    over_budget,
)
from allotment.domain.costs import Rates
from allotment.domain.resources import Resources
from allotment.scheduler import NodeState, Pending, Running
from allotment.scheduler.projection import project
from allotment.scheduler.usage import subtract
from allotment.schemas import BudgetLeft, ProfileQuote, QuotaLeft

from .view import DEFAULT_WALLTIME, LiveView, PolicyView

__all__ = ["BackendQuote", "BudgetBook", "QuoteRequest", "quote_profiles", "rates_of"]

#: Held workloads placed exactly before the quoted one; beyond, the fluid estimate.
EXACT = 200
#: Seconds within which a start a backend expects counts as "now" (Slurm's scheduling tick).
SLURM_TICK = 3.0


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


@dataclass(frozen=True, slots=True)
class BackendQuote:
    """What a backend that places work itself (Slurm) says about one request: its pool's free
    resources and when it would start one. The quote takes these instead of projecting the
    pool's queue, which that backend keeps."""

    #: Free on the pool's nodes that take work now, summed.
    free: Resources
    #: When the backend expects to start it; None: it refused it, or could not be asked.
    start: datetime | None
    #: Why the backend would never start it (no node that large), in its words.
    refused: str | None = None
    #: Why the backend could not be asked (its controller does not answer).
    unavailable: str | None = None


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


class BudgetBook:
    """The budgets over an account on a pool, read once (with what each spent) per book."""

    def __init__(self, session: AsyncSession, policy: Policy, now: datetime) -> None:
        self.session, self.policy, self.now = session, policy, now
        self._budgets: list[BudgetStatus] | None = None

    async def budgets(self) -> list[BudgetStatus]:
        if self._budgets is None:
            self._budgets = await budgets_in_force(self.session, self.policy, self.now)
        return self._budgets

    async def tightest(
        self, account: str, pool: str, hourly: float
    ) -> tuple[BudgetLeft | None, str | None]:
        """The budget with the least left over ``account`` on ``pool`` (its own, an
        ancestor's, on the pool or across pools), and why new work is held, if a hard stop
        holds it."""
        budget: BudgetLeft | None = None
        blocked = None
        for b in await self.budgets():
            if (b.pool is not None and b.pool != pool) or not is_within(account, b.account):
                continue
            until_stop = max(b.remaining, 0) / MICROS if b.hard_stop else max(b.left, 0) / MICROS
            candidate = BudgetLeft(
                account=b.account,
                period=b.period.period,
                amount=b.amount / MICROS,
                spent=b.spent / MICROS,
                left=b.left / MICROS,
                hours_left=until_stop / hourly if hourly > 0 else None,
                hard_stop=b.hard_stop,
            )
            if budget is None or candidate.left < budget.left:
                budget = candidate
            if b.blocked and blocked is None:
                blocked = b.hold_reason
        return budget, blocked

    async def beyond(
        self, account: str, pool: str, cost: float, running: Sequence[Running], now: float
    ) -> str | None:
        """Why the scheduler would hold a workload costing ``cost`` up to its maximum runtime
        (``scheduler.cycle``'s rule): with what running workloads of a hard-stop budget over
        it may still spend up to theirs, it goes beyond what that budget has left."""
        for b in await self.budgets():
            if not b.hard_stop or (b.pool is not None and b.pool != pool):
                continue
            if not is_within(account, b.account):
                continue
            committed = sum(
                rates_of(self.policy, r.pool).hourly(r.resources)
                * max(r.expected_end - now, 0.0)
                / 3600
                for r in running
                if not r.stopping
                and r.pool in self.policy.pools
                and (b.pool is None or r.pool == b.pool)
                and is_within(r.account, b.account)
            )
            left = b.remaining / MICROS
            if over_budget(cost, committed, left):
                text = beyond_text(cost, committed, left, b.overdraft / MICROS, b.currency, b.name)
                return f"{text}; {ask_text(b.managers)}"
        return None


async def quote_profiles(
    session: AsyncSession,
    view: PolicyView,
    live: LiveView,
    requests: Sequence[QuoteRequest],
    account: str,
    now: datetime,
    placed: Mapping[str, BackendQuote] | None = None,
) -> list[ProfileQuote]:
    """One quote per request, for a workload charged to ``account`` (a path).

    ``placed``: by request name, what the backend of a pool that places work itself said
    (``backends.slurm.quote``); the free resources and expected start are then its own.
    """
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
        backend = (placed or {}).get(req.name)
        refused: str | None = None
        if backend is not None:
            # Its backend's queue decides: Allotment holds only what policy holds.
            eta = None if backend.start is None else max(backend.start.timestamp(), t_now)
            # Slurm schedules on a one-second tick: "now" is within a few seconds.
            starts_now = eta is not None and eta <= t_now + SLURM_TICK
            free = backend.free
            if backend.refused:
                refused = f"the cluster cannot run it ({backend.refused})"
        else:
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
        blocked = blocked or refused
        if blocked is None:
            blocked = await budgets.beyond(
                account, req.pool, hourly * walltime / 3600, live.running, t_now
            )
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
