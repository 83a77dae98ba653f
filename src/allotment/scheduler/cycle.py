"""One scheduling cycle, as numbered steps:

1. order the queue (``ordering``);
2. reject what can never run; hold what a budget with a hard stop cannot pay for up to its
   walltime, with what running work of that budget may still spend (``domain.budgets``);
3. walk the queue with a working copy of free capacity: limits, quota and borrowing, fit;
4. the first workload of a pool that does not fit gets the EASY reservation; later ones start
   only if they do not delay it;
5. a workload within its guarantee that finds no room preempts borrowers;
6. held workloads get a position and an estimated start.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from allotment.domain.accounts import ancestors
from allotment.domain.budgets import beyond_text, over_budget
from allotment.domain.quantities import format_bytes
from allotment.domain.resources import Resources
from allotment.domain.workloads import WorkloadKind
from allotment.scheduler.decisions import Admit, Decision, Hold, Preempt, Reject
from allotment.scheduler.gcpause import gc_paused
from allotment.scheduler.ordering import order_queue
from allotment.scheduler.projection import project
from allotment.scheduler.snapshot import (
    Allocation,
    BudgetLimit,
    Limits,
    NodeState,
    Pending,
    Snapshot,
)
from allotment.scheduler.usage import subtract

__all__ = ["order_queue", "schedule"]

INF = float("inf")


_Size = tuple[int, int, tuple[tuple[str, int], ...]]
_DESCRIBED: dict[_Size, str] = {}


def _size(r: Resources) -> _Size:
    """A hashable key for a request's size (requests come in few sizes)."""
    return (r.millicpus, r.memory, tuple(sorted(r.gpus.items())) if r.gpus else ())


def _describe(r: Resources, key: _Size | None = None) -> str:
    """ "4 CPUs, 16G, 1× a100"; requests come in few sizes, so descriptions are remembered."""
    key = key or _size(r)
    text = _DESCRIBED.get(key)
    if text is None:
        if len(_DESCRIBED) > 10_000:
            _DESCRIBED.clear()
        text = _DESCRIBED[key] = r.describe()
    return text


@dataclass(eq=False)
class _Node:
    spec: NodeState
    free: Resources
    #: (expected end, resources) of what runs or was admitted this cycle.
    releases: list[tuple[float, Resources]] = field(default_factory=list)
    busy: bool = False


@dataclass
class _Reservation:
    workload: int
    node: str
    start: float
    #: What the reserved node will have beyond the reserved workload's needs at ``start``.
    extra: Resources


@dataclass
class _Totals:
    """Running use, per user, per account subtree and per allocation subtree and pool."""

    user: dict[str, Resources] = field(default_factory=lambda: defaultdict(Resources))
    user_n: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    account: dict[str, Resources] = field(default_factory=lambda: defaultdict(Resources))
    account_n: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    alloc: dict[tuple[str, str], Resources] = field(default_factory=lambda: defaultdict(Resources))

    def add(self, user: str, account: str, pool: str, owner: str | None, r: Resources) -> None:
        self.user[user] = self.user[user] + r
        self.user_n[user] += 1
        for a in (*ancestors(account), account):
            self.account[a] = self.account[a] + r
            self.account_n[a] += 1
        if owner is not None:
            self.alloc[(owner, pool)] = self.alloc[(owner, pool)] + r


def _over(limit: Limits, used: Resources, n: int, add: Resources) -> str | None:
    """Which part of ``limit`` adding ``add`` to ``used`` (n workloads) would exceed."""
    if limit.workloads is not None and n + 1 > limit.workloads:
        return f"{n} of its {limit.workloads} workloads"
    if limit.cpus is not None and (used.millicpus + add.millicpus) > limit.cpus * 1000:
        return f"{used.cpus:g} of its {limit.cpus:g} CPUs"
    if limit.memory is not None and used.memory + add.memory > limit.memory:
        return f"{format_bytes(used.memory)} of its {format_bytes(limit.memory)} of memory"
    if limit.gpus is not None and used.gpu_count + add.gpu_count > limit.gpus:
        return f"{used.gpu_count} of its {limit.gpus} GPUs"
    return None


def _per_node(total: Resources, nodes: int) -> Resources:
    """What a workload spanning ``nodes`` nodes needs on each (its total split evenly)."""
    if nodes <= 1:
        return total
    return Resources(
        -(-total.millicpus // nodes),
        -(-total.memory // nodes),
        {m: -(-n // nodes) for m, n in total.gpus.items()},
    )


class _Cycle:
    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap
        self.nodes: dict[str, list[_Node]] = defaultdict(list)
        self.by_name: dict[tuple[str, str], _Node] = {}
        for spec in snap.nodes:
            node = _Node(spec, spec.capacity)
            self.nodes[spec.pool].append(node)
            self.by_name[(spec.pool, spec.name)] = node
        self.owners: dict[tuple[str, str], str | None] = {}
        #: (user, account) → the limit that applies (``_user_limit``).
        self._limits: dict[tuple[str, str], Limits] = {}
        self.totals = _Totals()
        # Limits and allocations need running totals; without any (as in most replays) the
        # cycle skips that bookkeeping, which dominates its cost when much runs.
        self.track = bool(
            snap.user_limits
            or snap.default_limits != Limits()
            or any(a.limits is not None or a.allocations for a in snap.accounts.values())
        )
        used: dict[_Node, list[int]] = {}
        used_gpus: dict[_Node, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for r in snap.running:
            host = self.by_name.get((r.pool, r.node))
            if host is not None:
                acc = used.setdefault(host, [0, 0])
                acc[0] += r.resources.millicpus
                acc[1] += r.resources.memory
                for m, n in r.resources.gpus.items():
                    used_gpus[host][m] += n
                host.releases.append((r.expected_end, r.resources))
                host.busy = True
            if self.track:
                owner = self._owner(r.account, r.pool)
                self.totals.add(r.user, r.account, r.pool, owner, r.resources)
        for host, (mc, mem) in used.items():
            cap = host.spec.capacity
            gpus = {
                m: cap.gpus.get(m, 0) - used_gpus[host].get(m, 0)
                for m in set(cap.gpus) | set(used_gpus[host])
            }
            host.free = Resources(cap.millicpus - mc, cap.memory - mem, gpus)
        #: Request sizes already known to fit some node (requests come in few sizes).
        self.fits_somewhere: set[tuple[object, ...]] = set()
        #: Request classes (pool, size, walltime, whole node) already found to fit no node this
        #: cycle. Within a cycle free capacity and a reservation's slack only shrink, so a class
        #: that did not fit never will: the rest of its kind skip the node scan.
        self.no_fit: set[tuple[object, ...]] = set()
        self.max_free: dict[str, tuple[int, int]] = {}
        for pool in self.nodes:
            self._refresh_max(pool)
        self.reservations: dict[str, _Reservation] = {}
        self.blocked_pools: set[str] = set()
        self.decisions: list[Decision] = []
        #: Per pool, in queue order: (workload, reason, waits for capacity rather than for its
        #: own use to drop under a limit or a borrowing cap).
        self.held: dict[str, list[tuple[Pending, str, bool]]] = defaultdict(list)
        self.preempting: set[int] = {r.id for r in snap.running if r.stopping}
        #: Held by a budget: no expected start (money, not capacity, decides when).
        self.unpriced: set[int] = set()
        #: Per budget: what running and admitted workloads may still spend up to their ends.
        self.committed = [0.0] * len(snap.budgets)
        self._covering: dict[tuple[str, str], list[int]] = {}
        self._costs: dict[tuple[str, _Size, float], float] = {}
        self._hourly: dict[tuple[object, ...], float] = {}
        self._by_account: dict[str, list[int]] = defaultdict(list)
        for i, b in enumerate(snap.budgets):
            self._by_account[b.account].append(i)
        if snap.budgets:
            for r in snap.running:
                if not r.stopping:
                    cost = self._cost(r.pool, r.resources, r.expected_end - snap.now)
                    for i in self.covering(r.account, r.pool):
                        self.committed[i] += cost

    # -- policy lookups ---------------------------------------------------------------------

    def _owner(self, account: str, pool: str) -> str | None:
        """The account whose allocation on ``pool`` governs ``account``: itself or an ancestor."""
        key = (account, pool)
        if key in self.owners:
            return self.owners[key]
        found = None
        for a in (account, *reversed(ancestors(account))):
            st = self.snap.accounts.get(a)
            if st is not None and pool in st.allocations:
                found = a
                break
        self.owners[key] = found
        return found

    def _allocation(self, owner: str | None, pool: str) -> Allocation | None:
        return self.snap.accounts[owner].allocations[pool] if owner else None

    def _user_limit(self, user: str, account: str) -> Limits:
        """A user's own limit beats the accounts'; else the lowest along the chain; else default.
        Asked twice per pending workload and the same for all of a user's in one account:
        worked out once per cycle (it was two thirds of a cycle over a long queue)."""
        key = (user, account)
        found = self._limits.get(key)
        if found is None:
            found = self._limits[key] = self._work_out_limit(user, account)
        return found

    def _work_out_limit(self, user: str, account: str) -> Limits:
        own = self.snap.user_limits.get(user)
        if own is not None:
            return own
        chain = [
            self.snap.accounts[a].limits
            for a in (*ancestors(account), account)
            if a in self.snap.accounts and self.snap.accounts[a].limits is not None
        ]
        if not chain:
            return self.snap.default_limits

        def low(xs: list[float | int | None]) -> float | int | None:
            vals = [x for x in xs if x is not None]
            return min(vals) if vals else None

        return Limits(
            cpus=low([c.cpus for c in chain if c]),
            memory=low([c.memory for c in chain if c]),  # type: ignore[arg-type]
            gpus=low([c.gpus for c in chain if c]),  # type: ignore[arg-type]
            workloads=low([c.workloads for c in chain if c]),  # type: ignore[arg-type]
        )

    def covering(self, account: str, pool: str) -> list[int]:
        """Indices of the budgets over ``account`` on ``pool``."""
        key = (account, pool)
        found = self._covering.get(key)
        if found is None:
            found = self._covering[key] = [
                i
                for a in (*ancestors(account), account)
                for i in self._by_account.get(a, ())
                if self.snap.budgets[i].pool in (None, pool)
            ]
        return found

    def _cost(self, pool: str, r: Resources, seconds: float) -> float:
        """What ``r`` costs on ``pool`` for ``seconds``; hourly prices are remembered per
        size (requests come in few sizes, and every running workload is priced each cycle)."""
        key = (pool, r.millicpus, r.memory, tuple(r.gpus.items()) if r.gpus else ())
        hourly = self._hourly.get(key)
        if hourly is None:
            rates = self.snap.rates.get(pool)
            hourly = self._hourly[key] = 0.0 if rates is None else rates.hourly(r)
        return hourly * max(seconds, 0.0) / 3600

    # -- the steps ----------------------------------------------------------------------------

    def budget_reason(self, p: Pending, size: _Size) -> tuple[str | None, float]:
        """Why a budget holds ``p`` (spent, or its cost up to its walltime with what running
        work may still spend would go beyond what is left), and ``p``'s cost (0 when no
        budget covers it). Costs are remembered per request class: requests come in few."""
        if not self.snap.budgets:
            return None, 0.0
        covering = self.covering(p.account, p.pool)
        if not covering:
            return None, 0.0
        key = (p.pool, size, p.walltime)
        cost = self._costs.get(key)
        if cost is None:
            cost = self._costs[key] = self._cost(p.pool, p.resources, p.walltime)
        for i in covering:
            b: BudgetLimit = self.snap.budgets[i]
            if b.left <= 0:
                return b.reason, cost
            if over_budget(cost, self.committed[i], b.left):
                text = beyond_text(cost, self.committed[i], b.left, b.overdraft, b.currency, b.name)
                return f"{text}; {b.ask}", cost
        return None, cost

    def never(self, p: Pending, size: _Size) -> str | None:
        """Step 2: why ``p`` can never run, or None."""
        nodes = self.nodes.get(p.pool)
        if not nodes:
            return f"pool '{p.pool}' does not exist or has no nodes"
        if p.nodes > len(nodes):
            return f"it asks for {p.nodes} nodes; pool '{p.pool}' has {len(nodes)}"
        where = (p.pool, size, p.nodes)
        each = _per_node(p.resources, p.nodes)
        if where not in self.fits_somewhere and not any(each.fits_in(n.spec.size) for n in nodes):
            big = max(nodes, key=lambda n: (n.spec.size.gpu_count, n.spec.size.millicpus))
            return (
                f"it asks for {_describe(each)}"
                + (f" on each of {p.nodes} nodes" if p.nodes > 1 else "")
                + f"; the largest node of '{p.pool}' ({big.spec.name}) has "
                f"{_describe(big.spec.size)}"
            )
        self.fits_somewhere.add(where)
        if p.account not in self.snap.accounts:
            return f"account '{p.account}' does not exist"
        if not self.track:
            return None
        over = _over(self._user_limit(p.user, p.account), Resources(), 0, p.resources)
        if over is not None:
            return f"it alone exceeds {p.user}'s limit ({over.split(' of ', 1)[1]})"
        return None

    def limit_reason(self, p: Pending) -> str | None:
        if not self.track:
            return None
        t = self.totals
        over = _over(
            self._user_limit(p.user, p.account), t.user[p.user], t.user_n[p.user], p.resources
        )
        return None if over is None else f"{p.user} is using {over}"

    def quota(self, p: Pending, owner: str | None) -> tuple[bool, str | None]:
        """(within guarantee after admission, reason it may not borrow)."""
        alloc = self._allocation(owner, p.pool)
        if alloc is None:
            return False, None  # no guarantee: all use is borrowing, unlimited
        used = self.totals.alloc[(owner or "", p.pool)] + p.resources
        within = used.fits_in(alloc.quota)
        if within or alloc.borrowing_limit is None:
            return within, None
        limit = alloc.quota + alloc.borrowing_limit
        if not used.fits_in(limit):
            return False, (
                f"account {owner} would use {_describe(used)} of pool '{p.pool}', beyond its "
                f"quota and borrowing limit ({_describe(limit)})"
            )
        return False, None

    def _refresh_max(self, pool: str) -> None:
        nodes = self.nodes[pool]
        self.max_free[pool] = (
            max((n.free.millicpus for n in nodes), default=0),
            max((n.free.memory for n in nodes), default=0),
        )

    def best_fit(self, p: Pending, res: _Reservation | None = None) -> _Node | None:
        """The node where ``p`` leaves least unused, among those where it does not delay the
        pool's reservation ``res``."""
        most_cpu, most_mem = self.max_free[p.pool]
        if p.resources.millicpus > most_cpu or p.resources.memory > most_mem:
            return None  # the common case once a pool is full: no node scan
        best: _Node | None = None
        best_left = INF
        for n in self.nodes[p.pool]:
            if p.whole_node and n.busy:
                continue
            if not p.resources.fits_in(n.free):
                continue
            if res is not None and not self.backfill_ok(p, n, res):
                continue
            left = (n.free.millicpus - p.resources.millicpus) / max(n.spec.capacity.millicpus, 1)
            left += sum(n.free.gpus.values()) - p.resources.gpu_count
            if left < best_left:
                best, best_left = n, left
        return best

    def earliest(self, p: Pending, node: _Node) -> tuple[float, Resources] | None:
        """When ``p`` fits on ``node`` as running work ends, and what is free then."""
        if p.resources.fits_in(node.free) and not (p.whole_node and node.busy):
            return self.snap.now, node.free
        free = node.free
        for end, res in sorted(node.releases, key=lambda x: x[0]):
            free = free + res
            # Whole: all of it free (not ``==``: a GPU model the node no longer lists reads 0).
            if p.resources.fits_in(free) and (not p.whole_node or node.spec.capacity.fits_in(free)):
                return max(end, self.snap.now), free
        return None

    def reserve(self, p: Pending) -> _Reservation | None:
        best: tuple[float, str, Resources] | None = None
        for n in self.nodes[p.pool]:
            at = self.earliest(p, n)
            if at is not None and (best is None or at[0] < best[0]):
                best = (at[0], n.spec.name, at[1])
        if best is None:
            return None
        start, node, free = best
        # A whole node leaves nothing beside it: no backfill may still run there at ``start``.
        extra = Resources() if p.whole_node else subtract(free, p.resources)
        return _Reservation(p.id, node, start, extra)

    def backfill_ok(self, p: Pending, node: _Node, res: _Reservation) -> bool:
        if node.spec.name != res.node:
            return True
        if self.snap.now + p.walltime <= res.start:
            return True
        return p.resources.fits_in(res.extra)

    def admit(self, p: Pending, node: _Node, owner: str | None, cost: float = 0.0) -> None:
        if cost:
            for i in self.covering(p.account, p.pool):
                self.committed[i] += cost
        node.free = subtract(node.free, p.resources)
        node.releases.append((self.snap.now + p.walltime, p.resources))
        node.busy = True
        if self.track:
            self.totals.add(p.user, p.account, p.pool, owner, p.resources)
        self._refresh_max(p.pool)
        self.decisions.append(Admit(p.id, node.spec.name))

    def admit_elsewhere(self, p: Pending, owner: str | None, cost: float = 0.0) -> None:
        """Admit ``p`` to a pool whose backend places work itself: counted against limits,
        quotas and budgets like any admission, on no node of ours."""
        if cost:
            for i in self.covering(p.account, p.pool):
                self.committed[i] += cost
        if self.track:
            self.totals.add(p.user, p.account, p.pool, owner, p.resources)
        self.decisions.append(Admit(p.id, ""))

    def preempt_for(self, p: Pending, owner: str | None) -> bool:
        """Step 5: free a node for ``p`` by stopping borrowers there; True when planned.

        Dask workers go first: a node that stopping borrowed Dask workers alone frees is
        chosen before any node where a session or a job would be stopped, and on the node
        chosen they are stopped before anything else."""
        snap = self.snap
        victims_by_node: dict[str, list[tuple[bool, float, int, Resources]]] = defaultdict(list)
        for r in snap.running:
            if r.pool != p.pool or r.id in self.preempting:
                continue
            r_owner = self._owner(r.account, r.pool)
            if r_owner == owner and owner is not None:
                continue  # never preempt within the same guarantee
            alloc = self._allocation(r_owner, r.pool)
            borrowing = (
                r.preemptible
                or alloc is None
                or not self.totals.alloc[(r_owner or "", r.pool)].fits_in(alloc.quota)
            )
            if borrowing:
                worker = r.kind == WorkloadKind.DASK_WORKER
                victims_by_node[r.node].append((not worker, r.priority, r.id, r.resources))
        passes = (
            [True, False]
            if any(not v[0] for vs in victims_by_node.values() for v in vs)
            else [False]
        )
        for workers_only in passes:
            for n in self.nodes[p.pool]:
                free = n.free
                chosen = []
                for other, _, rid, res in sorted(victims_by_node.get(n.spec.name, [])):
                    if p.resources.fits_in(free) or (workers_only and other):
                        break
                    free = free + res
                    chosen.append(rid)
                if chosen and p.resources.fits_in(free):
                    self._preempt(p, owner, n.spec.name, chosen, free)
                    return True
        return False

    def _preempt(
        self, p: Pending, owner: str | None, node: str, victims: list[int], free: Resources
    ) -> None:
        """Stop ``victims`` for ``p``, which then holds the reservation of ``node``."""
        snap = self.snap
        for rid in victims:
            self.preempting.add(rid)
            self.decisions.append(
                Preempt(
                    rid,
                    p.id,
                    snap.preemption_grace,
                    f"preempted: account {owner} needs its guaranteed resources back",
                )
            )
        self.reservations.setdefault(
            p.pool,
            _Reservation(p.id, node, snap.now + snap.preemption_grace, subtract(free, p.resources)),
        )

    def run(self) -> list[Decision]:
        snap = self.snap
        queue = snap.pending if snap.presorted else order_queue(snap)
        for p in queue:
            if (
                not snap.explain
                and p.pool in self.blocked_pools
                and (snap.policy == "fifo" or self._full(p.pool))
            ):
                # Replay needs only what starts: nothing more can in this pool.
                if len(self.nodes) == 1:
                    break
                continue
            size = _size(p.resources)
            reason = self.never(p, size)
            if reason is not None:
                self.decisions.append(Reject(p.id, reason))
                continue
            reason, cost = self.budget_reason(p, size)
            if reason is not None:
                self.unpriced.add(p.id)
                self.held[p.pool].append((p, reason, False))
                continue
            reason = self.limit_reason(p)
            owner = self._owner(p.account, p.pool) if self.track else None
            if reason is None:
                within, reason = self.quota(p, owner)
            else:
                within = False
            if reason is not None:
                self.held[p.pool].append((p, reason, False))
                continue
            if p.pool in snap.placed_elsewhere:
                # Its backend finds it a node and a start; the policy has had its say.
                self.admit_elsewhere(p, owner, cost)
                continue
            if snap.policy == "fifo" and p.pool in self.reservations:
                self.held[p.pool].append((p, "waiting for the workloads ahead of it (fifo)", False))
                continue
            res = self.reservations.get(p.pool)
            cls = (p.pool, size, p.walltime, p.whole_node)
            node = None if cls in self.no_fit else self.best_fit(p, res)
            if node is None:
                self.no_fit.add(cls)
            if node is not None:
                self.admit(p, node, owner, cost)
                if (
                    res is not None
                    and node.spec.name == res.node
                    and snap.now + p.walltime > res.start
                ):
                    res.extra = subtract(res.extra, p.resources)
                continue
            if node is None and within and self.preempt_for(p, owner):
                self.held[p.pool].append(
                    (
                        p,
                        "waiting for borrowed resources to be returned (preemption under way)",
                        True,
                    )
                )
                continue
            if res is None:
                new = self.reserve(p)
                if new is not None:
                    self.reservations[p.pool] = new
                self.blocked_pools.add(p.pool)
                reason = f"waiting for {_describe(p.resources, size)} to free up (next in line)"
            else:
                # The same words for everyone behind the head, whoever the head is: its place
                # says how far back it is, and the reasons of a long queue stay put.
                reason = f"waiting for {_describe(p.resources, size)} to free up"
            self.held[p.pool].append((p, reason, True))
        if snap.explain:
            self.estimate()
        return self.decisions

    def _full(self, pool: str) -> bool:
        return all(n.free.millicpus <= 0 for n in self.nodes[pool])

    def estimate(self) -> None:
        """Step 6: positions, and start times projected on a capacity profile.

        Those waiting for capacity are projected first, in queue order, the reservation's
        holder leading; those held by a limit or a borrowing cap wait on their own use, not on
        the queue, and are projected after them, so that they never push the head back. Those
        a budget holds get no expected start: money, not capacity, decides when they run.
        """
        for pool, held in self.held.items():
            res = self.reservations.get(pool)
            lead = res.workload if res else None
            by_index: list[float | None] = [None] * len(held)
            if self.snap.estimates:
                first = [i for i, h in enumerate(held) if h[0].id == lead]
                waits = [i for i, (p, _, w) in enumerate(held) if w and p.id != lead]
                rest = [
                    i
                    for i, (p, _, w) in enumerate(held)
                    if not w and p.id != lead and p.id not in self.unpriced
                ]
                order = first + waits + rest
                etas = project(
                    [held[i][0] for i in order],
                    self.nodes[pool],
                    self.snap.now,
                    self.snap.exact_etas,
                    in_order=self.snap.policy == "fifo",
                )
                for i, eta in zip(order, etas, strict=True):
                    by_index[i] = eta
            for pos, (p, reason, _) in enumerate(held, start=1):
                self.decisions.append(Hold(p.id, reason, pos, by_index[pos - 1]))


def schedule(snap: Snapshot) -> list[Decision]:
    """Decide, for every pending workload, Admit, Hold or Reject (and any Preempts)."""
    with gc_paused():
        return _Cycle(snap).run()
