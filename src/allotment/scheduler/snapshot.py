"""The scheduler's whole view of the world at one instant: frozen, complete, no I/O.

Times are seconds on one clock (epoch seconds in the service, trace seconds in replay).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from allotment.domain.costs import Rates
from allotment.domain.resources import Resources

__all__ = [
    "AccountState",
    "Allocation",
    "BudgetLimit",
    "Limits",
    "NodeState",
    "Pending",
    "Policy",
    "Running",
    "Snapshot",
    "Weights",
]

#: ``fifo``: strict order, no backfill. ``easy``: order of submission, EASY backfill.
#: ``fairshare``: hierarchical fair-share priority, EASY backfill (the default).
Policy = Literal["fifo", "easy", "fairshare"]


@dataclass(frozen=True, slots=True)
class Limits:
    """Concurrent use that may not be exceeded; None means unlimited."""

    cpus: float | None = None
    memory: int | None = None
    gpus: int | None = None
    workloads: int | None = None


@dataclass(frozen=True, slots=True)
class Allocation:
    """An account's grant on a pool, covering its whole subtree."""

    #: Guaranteed resources: within them, the account may preempt borrowers.
    quota: Resources = field(default_factory=Resources)
    #: Most it may use beyond the quota when capacity is idle; None means unlimited.
    borrowing_limit: Resources | None = None


@dataclass(frozen=True, slots=True)
class AccountState:
    path: str
    #: Fair-share weight among siblings; 0 means it ranks after every sibling with shares.
    shares: float = 1.0
    #: Limits on each user charging this account or below, unless the user has their own;
    #: the lowest along the chain applies. The subtree's total is capped by allocations.
    limits: Limits | None = None
    #: Pool name → allocation.
    allocations: Mapping[str, Allocation] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NodeState:
    pool: str
    name: str
    #: What may be handed out now.
    capacity: Resources
    #: What the policy declares, where its backend has less now (a Slurm node drained or
    #: down): a workload that fits the declared node waits for it rather than being refused.
    #: None: the same as ``capacity``.
    declared: Resources | None = None

    @property
    def size(self) -> Resources:
        """What the node has when all of it is there: what decides whether a workload can
        ever run on it."""
        return self.capacity if self.declared is None else self.declared


@dataclass(frozen=True, slots=True)
class Running:
    id: int
    user: str
    account: str
    pool: str
    node: str
    resources: Resources
    started: float
    #: When it is expected to end: start + requested walltime (or the profile's max runtime).
    expected_end: float
    priority: float = 0.0
    #: Already told to stop (preempted or cancelled): never chosen as a victim again.
    stopping: bool = False
    #: Stepped down by a spent budget: a victim candidate for an owner reclaiming its
    #: guarantee, like a borrower, whatever its account's allocation.
    preemptible: bool = False
    #: Its ``WorkloadKind`` (``"dask-worker"``…); empty where unknown (trace replay). Dask
    #: workers are preempted before anything else: Dask moves their data and another worker
    #: takes their place, where a session or a job loses its work.
    kind: str = ""


@dataclass(frozen=True, slots=True)
class Pending:
    id: int
    user: str
    account: str
    pool: str
    resources: Resources
    submitted: float
    #: Requested walltime in seconds (or the profile's max runtime): used for backfill.
    walltime: float
    #: Added to the priority (a profile's priority).
    priority: float = 0.0
    #: Take a node with nothing else on it.
    whole_node: bool = False
    #: Nodes it spans (``resources`` is the total over them); more than one only on a pool
    #: whose backend places work itself.
    nodes: int = 1


@dataclass(frozen=True, slots=True)
class BudgetLimit:
    """A budget with a hard stop, as admission sees it (``domain.budgets``). It covers the
    subtree of ``account``, on ``pool`` (None: every pool)."""

    account: str
    pool: str | None
    #: What may still be spent, in the currency: amount + overdraft − spent (≤ 0: spent).
    left: float
    #: The overdraft included in ``left``, to say so; 0: none.
    overdraft: float = 0.0
    #: Why new work is held once it is spent ("lab-a has spent … ask alice (manager) …").
    reason: str = ""
    #: The budget in words, after "left": "of lab-a's budget for December".
    name: str = ""
    #: Whom to ask: "ask alice (manager) to raise it".
    ask: str = ""
    currency: str = "credits"


@dataclass(frozen=True, slots=True)
class Weights:
    fairshare: float = 10_000.0
    age: float = 1_000.0
    #: Age at which the age factor reaches 1.
    max_age: float = 7 * 86_400.0


@dataclass(frozen=True)
class Snapshot:
    now: float
    accounts: Mapping[str, AccountState]
    nodes: Sequence[NodeState]
    running: Sequence[Running] = ()
    pending: Sequence[Pending] = ()
    #: Decayed dominant usage per (account path, user); see ``scheduler.usage``.
    usage: Mapping[tuple[str, str], float] = field(default_factory=dict)
    user_limits: Mapping[str, Limits] = field(default_factory=dict)
    default_limits: Limits = field(default_factory=Limits)
    weights: Weights = field(default_factory=Weights)
    policy: Policy = "fairshare"
    #: Warning time a preempted workload gets before it is stopped.
    preemption_grace: float = 300.0
    #: Held workloads per pool whose start is projected exactly; the rest are estimated.
    exact_etas: int = 100
    #: False in trace replay: no Hold decisions, and the walk stops once pools are full.
    explain: bool = True
    #: False: Hold decisions carry reason and position but no expected start (None). Start
    #: times move little between cycles, so the controller projects them on a slower timer of
    #: its own, as Slurm's backfill scheduler sets StartTime every ``bf_interval``, and runs the
    #: event-driven cycles without them.
    estimates: bool = True
    #: Fair-share factors computed earlier (Slurm recomputes them every few minutes, not every
    #: cycle); None computes them from ``usage`` now.
    fair_share: Mapping[tuple[str, str], float] | None = None
    #: Budgets with a hard stop; a workload whose cost up to its walltime does not fit what
    #: one of them has left is held (``domain.budgets.over_budget``).
    budgets: Sequence[BudgetLimit] = ()
    #: Prices per pool, to cost workloads against ``budgets``; a pool not named is free.
    rates: Mapping[str, Rates] = field(default_factory=dict)
    #: ``pending`` is already in scheduling order (a caller that keeps the queue sorted between
    #: priority recalculations, as trace replay does); the cycle then does not sort it again.
    presorted: bool = False
    #: Pools whose backend places and starts work itself (Slurm): their workloads are admitted
    #: on policy alone (limits, quotas and borrowing caps, budgets), without a node, and wait
    #: in the backend's own queue for room.
    placed_elsewhere: frozenset[str] = frozenset()
