"""The scheduling loop: reads the queue, runs the pure scheduler, writes its decisions.

It runs when nudged (a submission, a cancel, a workload ending) and at least every
``scheduling.interval``. Fair-share factors are recomputed every ``fair_share_interval`` and
expected starts every ``estimate_interval`` (design note 0001 §7); cycles in between reuse them.
Decisions are written with a guard on the state they were made for, so a cancel that lands
during a cycle wins over an admission made from the older snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from allotment.backends.base import NodeCapacity
from allotment.clock import Clock
from allotment.controller.capacity import schedulable
from allotment.controller.failpoints import failpoint
from allotment.controller.quote import rates_of
from allotment.controller.reconciler import Row
from allotment.controller.view import (
    LiveView,
    PolicyView,
    QueueCache,
    ViewCache,
    load_live,
    load_policy_view,
    usage,
)
from allotment.db import workloads
from allotment.db.budgets import load_budgets
from allotment.db.engine import Database
from allotment.db.outage import OutageLog, classify
from allotment.db.tables import BudgetRow, Profile, Workload
from allotment.domain.budgets import MICROS, ask_text
from allotment.domain.costs import Rates
from allotment.domain.workloads import ACTIVE, WorkloadKind
from allotment.scheduler import (
    Admit,
    BudgetLimit,
    Decision,
    Hold,
    NodeState,
    Preempt,
    Reject,
    Running,
    Snapshot,
    schedule,
)
from allotment.scheduler.fairshare import fair_share_factors

__all__ = ["CycleResult", "SchedulingLoop"]

log = logging.getLogger("allotment.controller")

#: How long a cycle reuses the policy in force and the accounts' shares before reading them
#: again (a policy applied or a share changed takes effect within this).
VIEW_SECONDS = 1.0

#: Decayed usage per (account, user), or None when this cycle reuses the last factors.
Usage = dict[tuple[str, str], float] | None

#: Held workloads per pool whose place in the queue is rewritten on every cycle.
EXACT_POSITIONS = 20

#: How often backends are asked again what they have, between policy versions.
CAPACITY_SECONDS = 30.0

#: After a cycle that took t seconds, the next waits until t × PACE has passed, however often
#: it is nudged: the loop spends at most half its time scheduling (with a short queue a cycle
#: takes milliseconds, and so does the rest), and the API, the reconciler and the database
#: keep the rest, the way Slurm's ``sched_min_interval`` bounds its main scheduler.
PACE = 1.0

#: The longest rest after a cycle, in seconds, whatever it cost.
MAX_REST = 1.0


@dataclass(frozen=True)
class Budgets:
    """What admission charges against (``scheduler.BudgetLimit``), read with the policy."""

    limits: list[BudgetLimit]
    #: Active workloads on a profile that budgets step down to: preemptible.
    stepped_down: set[int]
    rates: dict[str, Rates]


def read_budgets(session: Session, view: PolicyView, now: datetime) -> Budgets:
    """The hard-stop budgets in force, with what was spent (one grouped query of the
    ledger's daily totals), and the workloads stepped down by one."""
    statuses = load_budgets(session, view.policy, now)
    limits = [
        BudgetLimit(
            b.account,
            b.pool,
            b.remaining / MICROS,
            b.overdraft / MICROS,
            b.hold_reason,
            b.name,
            ask_text(b.managers),
            b.currency,
        )
        for b in statuses
        if b.hard_stop
    ]
    names = {b.step_down for b in statuses if b.step_down}
    stepped: set[int] = set()
    if names:
        stepped = set(
            session.execute(
                select(Workload.id)
                .join(Profile, Profile.id == Workload.profile_id)
                .where(Profile.name.in_(names), Workload.status.in_([int(s) for s in ACTIVE]))
            ).scalars()
        )
    rates = {pool: rates_of(view.policy, pool) for pool in view.policy.pools} if limits else {}
    return Budgets(limits, stepped, rates)


def _dask_workers(session: Session) -> Collection[int]:
    """Active Dask workers: the first victims of a preemption (``scheduler.cycle``)."""
    return (
        session.execute(
            select(Workload.id).where(
                Workload.status.in_([int(s) for s in ACTIVE]),
                Workload.kind == WorkloadKind.DASK_WORKER,
            )
        )
        .scalars()
        .all()
    )


def _marked(r: Running, stepped: Collection[int], dask_workers: Collection[int]) -> Running:
    """``r`` with what the scheduler's preemption needs beyond its row: stepped down by a
    budget (preemptible), a Dask worker (preempted first)."""
    if r.id in stepped:
        r = replace(r, preemptible=True)
    if r.id in dask_workers:
        r = replace(r, kind=WorkloadKind.DASK_WORKER)
    return r


@dataclass(frozen=True)
class CycleResult:
    """What one cycle wrote: ids admitted and preempted, how many holds and rejections."""

    admitted: list[int]
    preempted: list[int]
    held: int
    rejected: int


class SchedulingLoop:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        pools: Callable[[PolicyView], Collection[str]],
        *,
        on_admit: Callable[[int, Row | None], None] = lambda _w, _r: None,
        read_admitted: Callable[[Session, list[int]], Mapping[int, Row]] | None = None,
        capacity: Callable[[], Awaitable[Mapping[str, Sequence[NodeCapacity]]]] | None = None,
        placed_elsewhere: Callable[[PolicyView], Collection[str]] = lambda _v: (),
    ) -> None:
        self.db = db
        self.clock = clock
        #: The pools this controller drives (those whose backend it has).
        self.pools = pools
        #: Those of them whose backend places and starts work itself (Slurm): admitted on
        #: policy alone (``Snapshot.placed_elsewhere``).
        self.placed_elsewhere = placed_elsewhere
        #: Called with every workload the reconciler must act on (admitted, preempted,
        #: cancelled) and, for those admitted, what ``read_admitted`` read of it, else None.
        self.on_admit = on_admit
        #: Reads the workloads admitted in the transaction that admits them.
        self.read_admitted = read_admitted
        #: What each backend reports it has (``Backend.capacity``), asked per policy version
        #: and every ``CAPACITY_SECONDS``; None: the policy's nodes as declared.
        self.capacity = capacity
        self._declared: list[NodeState] | None = None
        self._capacity_at = float("-inf")
        #: What differed from the policy when last asked (each logged once, when it appears).
        self._notes: set[str] = set()
        self._nodes: list[NodeState] = []
        self._wake = asyncio.Event()
        #: When the last cycle completed (the controller's heartbeat), None before the first.
        self.cycled_at: datetime | None = None
        #: The database's outages, logged once each.
        self.outage = OutageLog("scheduling loop", "cycles failed", log)
        #: How long the last cycle took, in seconds (``PACE``).
        self.took = 0.0
        self._factors: dict[tuple[str, str], float] | None = None
        self._factors_at = float("-inf")
        self._estimates_at = float("-inf")
        #: What was last written for each held workload: (reason, position, expected start).
        self._shown: dict[int, tuple[str, int | None, datetime | None]] = {}
        #: The policy's ``scheduling.interval``, as of the last cycle.
        self.interval = 10.0
        self._views: ViewCache = {}
        self._queue = QueueCache()
        self._view: PolicyView | None = None
        self._view_at = float("-inf")
        #: Budgets with what they spent, read again every ``accounting.interval`` (spending
        #: moves only when the meter charges), when the budgets table changes (checked with
        #: the view) and at once after ``budgets_changed``.
        self._budgets = Budgets([], set(), {})
        self._budgets_stale = True
        self._budgets_at = float("-inf")
        self._budgets_signature: tuple[object, ...] | None = None

    def budgets_changed(self) -> None:
        """A budget was set or raised: read budgets again next cycle, and run one soon (held
        workloads it releases start without waiting for the timer)."""
        self._budgets_stale = True
        self.nudge()

    def nudge(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            interval = 10.0
            try:
                await self.cycle()
                interval = self.interval
                self.cycled_at = self.clock.now()
                self.outage.recovered()
            except Exception as e:
                if (outage := classify(e)) is None:
                    log.exception("scheduling cycle failed; trying again")
                    await asyncio.sleep(1.0)
                else:  # logged once; tried again within seconds, so work resumes soon after
                    self.outage.failed(outage)
                    interval = self.outage.backoff()
            ended = time.monotonic()
            # Not asyncio.wait_for: on Python 3.11 it can swallow a cancel that arrives as the
            # event is set, and the controller's stop would wait for ever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake.wait()
            # Nudged again at once (a stream of submissions, a drain's every end): rest a
            # while in proportion to what a cycle costs, and let the nudges that arrive
            # meanwhile share the next cycle.
            rest = ended + min(self.took * PACE, MAX_REST) - time.monotonic()
            if rest > 0:
                await asyncio.sleep(rest)
            self._wake.clear()

    async def cycle(self) -> CycleResult | None:
        """One cycle; what it did, or None while no policy is in force."""
        started = time.monotonic()
        try:
            return await self._cycle()
        finally:
            self.took = time.monotonic() - started

    async def _cycle(self) -> CycleResult | None:
        now = self.clock.now()
        mono = time.monotonic()
        view_stale = self._view is None or mono - self._view_at >= VIEW_SECONDS
        budgets_due = self._budgets_stale or (
            self._view is not None
            and mono - self._budgets_at >= self._view.policy.accounting.interval
        )
        self._budgets_stale = False

        reread = False
        #: Active Dask workers (read only while work waits: only it preempts).
        dask_workers: set[int] = set()

        def read(
            session: Session,
        ) -> tuple[PolicyView | None, LiveView | None, Usage, Budgets | None]:
            nonlocal reread
            view = load_policy_view(session, self._views) if view_stale else self._view
            if view is None:
                return None, None, None, None
            live = load_live(session, view, now, self._queue)
            if not view_stale and any(p.account not in view.accounts for p in live.pending):
                # Work charged to an account a manager created since the view was read: read
                # it again rather than reject the work as charged to no account.
                reread = True
                view = load_policy_view(session, self._views)
                if view is None:
                    return None, None, None, None
                live = load_live(session, view, now, self._queue)
            if live.pending:
                dask_workers.update(_dask_workers(session))
            refresh = (
                self._factors is None
                or mono - self._factors_at >= view.policy.scheduling.fair_share_interval
            )
            budgets = None
            if budgets_due or view_stale:
                signature = tuple(
                    session.execute(select(func.count(), func.max(BudgetRow.updated_at))).one()
                )
                if budgets_due or signature != self._budgets_signature:
                    budgets = read_budgets(session, view, now)
                    self._budgets_signature = signature
            return view, live, usage(session, view, now) if refresh else None, budgets

        view, live, used, budgets = await self.db.run_read(read)
        if view_stale or reread:
            self._view, self._view_at = view, mono
        if budgets is not None:
            self._budgets, self._budgets_at = budgets, mono
        if view is None or live is None:
            return None
        spec = view.policy.scheduling
        refresh = used is not None
        used = used or {}
        driven = set(self.pools(view))
        pending = [p for p in live.pending if p.pool in driven]
        if refresh or any((p.account, p.user) not in (self._factors or {}) for p in pending):
            shares = {path: a.shares for path, a in view.accounts.items()}
            self._factors = fair_share_factors(shares, used, ((p.account, p.user) for p in pending))
            self._factors_at = mono
        estimates = mono - self._estimates_at >= spec.estimate_interval
        stepped = self._budgets.stepped_down
        snap = Snapshot(
            now=now.timestamp(),
            accounts=view.accounts,
            nodes=[n for n in await self._schedulable(view) if n.pool in driven],
            running=[_marked(r, stepped, dask_workers) for r in live.running if r.pool in driven],
            pending=pending,
            user_limits=view.user_limits,
            default_limits=view.default_limits,
            weights=view.weights,
            policy=spec.policy,
            preemption_grace=float(spec.preemption_grace),
            fair_share=self._factors,
            estimates=estimates,
            budgets=self._budgets.limits,
            rates=self._budgets.rates,
            placed_elsewhere=frozenset(self.placed_elsewhere(view)) & driven,
        )
        decisions = schedule(snap)
        if estimates:
            self._estimates_at = mono
        waiting = dict(live.waiting)
        for p in live.pending:
            if p.pool not in driven:
                backend = view.backends.get(p.pool, "?")
                waiting[p.id] = (
                    f"pool '{p.pool}' uses the {backend} backend, which this service does not "
                    "run yet"
                )
        result, rows = await self._persist(decisions, waiting, live.doomed, now, estimates)
        if len(self._shown) > 2 * len(live.pending) + 1000:
            # Workloads cancelled while pending leave no decision behind: forget them too.
            queued = {p.id for p in live.pending} | set(waiting)
            self._shown = {w: v for w, v in self._shown.items() if w in queued}
        self._queue.forget(
            {
                *result.admitted,
                *live.doomed,
                *(d.workload for d in decisions if isinstance(d, Reject)),
            }
        )
        self.interval = float(spec.interval)
        if result.admitted:
            failpoint("admitted")
        for w in result.admitted:
            self.on_admit(w, rows.get(w))
        for w in (*result.preempted, *live.to_stop):
            self.on_admit(w, None)
        return result

    async def _schedulable(self, view: PolicyView) -> list[NodeState]:
        """The policy's nodes as far as their backends have them (``capacity.py``): asked at
        the first cycle, whenever another policy version comes into force, and every
        ``CAPACITY_SECONDS`` (a Slurm node drained, or back)."""
        if self.capacity is None:
            return view.nodes
        mono = time.monotonic()
        if view.nodes is not self._declared or mono - self._capacity_at >= CAPACITY_SECONDS:
            self._nodes, notes = schedulable(view.nodes, view.backends, await self.capacity())
            self._declared, self._capacity_at = view.nodes, mono
            for note in notes:
                if note not in self._notes:
                    log.warning("%s", note)
            self._notes = set(notes)
        return self._nodes

    async def _persist(
        self,
        decisions: list[Decision],
        waiting: dict[int, str],
        doomed: dict[int, str],
        now: datetime,
        estimates: bool,
    ) -> tuple[CycleResult, Mapping[int, Row]]:
        #: (workload, node, reason) and (workload, reason); holds and rejections as the
        #: parameters of one executemany each.
        admits: list[tuple[int, str, str]] = []
        holds: list[workloads.Hold] = []
        rejects: list[workloads.Rejection] = []
        preempts: list[tuple[int, str]] = []
        shown = self._shown
        for d in decisions:
            if isinstance(d, Admit):
                admits.append((d.workload, d.node, f"admitted to {d.node}"))
                shown.pop(d.workload, None)
            elif isinstance(d, Hold):
                old = shown.get(d.workload)
                eta = (
                    datetime.fromtimestamp(round(d.eta), UTC)
                    if estimates and d.eta is not None
                    else (old[2] if old is not None and not estimates else None)
                )
                new: tuple[str, int | None, datetime | None] = (d.reason, d.position, eta)
                if (
                    old is not None
                    and not estimates
                    and old[0] == d.reason
                    and d.position > EXACT_POSITIONS
                ):
                    # Deep in the queue every admission moves everyone up one place: those
                    # places are rewritten with the start-time projection, not every cycle.
                    continue
                if old != new:
                    shown[d.workload] = new
                    holds.append(
                        {"wid": d.workload, "reason": d.reason, "position": d.position, "eta": eta}
                    )
            elif isinstance(d, Reject):
                rejects.append({"wid": d.workload, "reason": f"cannot run: {d.reason}"})
                shown.pop(d.workload, None)
            elif isinstance(d, Preempt):
                preempts.append((d.victim, d.reason))
        for wid, reason in waiting.items():
            waits: tuple[str, int | None, datetime | None] = (reason, None, None)
            if shown.get(wid) != waits:
                shown[wid] = waits
                holds.append({"wid": wid, "reason": reason, "position": None, "eta": None})
        for wid, reason in doomed.items():
            rejects.append({"wid": wid, "reason": f"cannot run: {reason}"})
            shown.pop(wid, None)
        admitted: list[int] = []
        preempted: list[int] = []
        rows: Mapping[int, Row] = {}
        if admits or holds or rejects or preempts:

            def write(session: Session) -> Mapping[int, Row]:
                # One transaction for the whole cycle; holds and rejections are one
                # executemany each.
                conn = session.connection()
                for wid, node, reason in admits:
                    if workloads.to_admitted(conn, wid, node, reason, now):
                        admitted.append(wid)
                workloads.record_holds(conn, holds)
                workloads.reject_many(conn, rejects, now)
                for wid, reason in preempts:
                    if workloads.request_stop(conn, wid, reason, now):
                        preempted.append(wid)
                if admitted and self.read_admitted is not None:
                    return self.read_admitted(session, admitted)
                return {}

            rows = await self.db.run_write(write)
        return CycleResult(admitted, preempted, len(holds), len(rejects)), rows
