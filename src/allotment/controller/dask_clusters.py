"""The Dask clusters' loop: each cluster's workers follow what was asked for, and a cluster
whose owner went away, that sits idle, or whose scheduler ended is stopped, saying why.

Every few seconds, and when nudged (a scale, a stop, a scheduler's report, a workload that
ended), one pass reads every cluster that has not ended (``db.dask_control.live_clusters``)
and decides for each with the pure rules below (``plan``):

- a running cluster with fewer live workers than it asks for gets new worker workloads, which
  wait in the queue like any other work; one with more has the extra ones stopped, those not
  yet running first, then the idle ones its scheduler named, then the newest (a stopped
  worker retires gracefully: Dask moves its data). A worker that died is replaced the same
  way. Workers are never made before the cluster runs: they need its scheduler's address.
- a cluster whose scheduler ended, or whose workers keep failing as they start, fails;
- one whose session ended, whose client stopped heartbeating (unless it was made with
  ``shutdown_on_close=False``) or that was idle for ``dask.idle_timeout`` is stopped;
- a stopping cluster has all its workloads stopped, and ends once they all have.

A pass that finds something to do decides again inside one write transaction and writes
everything there (the cluster's move, the workers counted and inserted, the workloads told to
stop), so a crash at any point leaves either all of it or none, and the next pass (or the
next controller) starts from what was committed: never two workers for one slot, never a lost
stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial

from sqlalchemy.orm import Session

from allotment.clock import Clock
from allotment.config.models import DaskSpec
from allotment.controller.view import ViewCache, load_policy_view
from allotment.db import workloads
from allotment.db.dask_control import (
    ClusterFacts,
    insert_workers,
    live_clusters,
    orphans,
    to_ended,
    to_stopping,
)
from allotment.db.engine import Database
from allotment.db.outage import OutageLog, classify
from allotment.domain.dask import ClusterState
from allotment.domain.workloads import TERMINAL, WorkloadKind
from allotment.domain.workloads import WorkloadState as S

__all__ = ["DaskClusters", "PassResult", "Plan", "Rules", "plan"]

log = logging.getLogger("allotment.controller")

#: Workers in a row that failed soon after they started: the cluster fails rather than
#: replace them for ever (a broken environment, a worker that cannot reach its scheduler).
FAILURE_STREAK = 5
#: A worker that ran less than this before it failed "failed as it started".
SHORT_RUN = 60.0
#: Workers that ended this recently are read to find a streak.
RECENT = 600.0
#: A running cluster whose scheduler has not reported for this long (it reports every 5 s)
#: has hung or lost its way to the service: it fails rather than hold its workers for ever.
#: A scheduler that runs this long twice over without a first report fails too.
REPORT_TIMEOUT = 120.0


@dataclass(frozen=True, slots=True)
class Rules:
    """The policy's ``dask:`` section, as the rules read it (seconds)."""

    owner_grace: float = 60.0
    idle_timeout: float = 1800.0
    max_workers: int = 64

    @classmethod
    def of(cls, spec: DaskSpec) -> Rules:
        return cls(float(spec.owner_grace), float(spec.idle_timeout), spec.max_workers)


@dataclass
class Plan:
    """What one pass does to one cluster."""

    cluster: int
    #: Move it to STOPPING with this reason.
    stop: str | None = None
    #: End it so (every workload of it has ended).
    end: ClusterState | None = None
    #: Workers to add.
    add: int = 0
    #: Workloads to stop, with the reason each is told.
    cancel: dict[int, str] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return self.stop is None and self.end is None and not self.add and not self.cancel


def _duration(seconds: float) -> str:
    """ "30 min", "90 s": a grace or a timeout as the researcher reads it."""
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def _workers(n: int) -> str:
    return f"{n} worker{'' if n == 1 else 's'}"


def failure(c: ClusterFacts) -> str | None:
    """Why a starting or running cluster fails now; None while it need not."""
    sched = c.scheduler
    if sched is not None and sched.ended:
        why = f" ({sched.reason})" if sched.reason else ""
        return f"failed: the scheduler {sched.status.label}{why}"
    ended = sorted(
        (m for m in c.members if m.kind == WorkloadKind.DASK_WORKER and m.ended),
        key=lambda m: (m.ended_at is not None, m.ended_at, m.id),
        reverse=True,
    )[:FAILURE_STREAK]
    if len(ended) == FAILURE_STREAK and all(
        m.status == S.FAILED
        and (
            m.started_at is None
            or m.ended_at is None
            or (m.ended_at - m.started_at).total_seconds() < SHORT_RUN
        )
        for m in ended
    ):
        return (
            f"failed: its last {FAILURE_STREAK} workers failed as they started "
            f"(the last: {ended[0].reason or 'no reason given'})"
        )
    return None


def silence(c: ClusterFacts, now: datetime, watching_since: datetime | None) -> str | None:
    """Why a cluster whose scheduler does not report fails now; None while it reports.

    Silence is counted from ``watching_since`` at the earliest (the controller's start): a
    service that was down heard no report, through no fault of the scheduler's."""

    def quiet(since: datetime) -> float:
        if watching_since is not None:
            since = max(since, watching_since)
        return (now - since).total_seconds()

    sched = c.scheduler
    if c.state == ClusterState.RUNNING and c.scheduler_seen_at is not None:
        if quiet(c.scheduler_seen_at) >= REPORT_TIMEOUT:
            return (
                "failed: its scheduler stopped reporting to the service (nothing for "
                f"{_duration(REPORT_TIMEOUT)}): it hung, or cannot reach the service"
            )
    elif c.state == ClusterState.STARTING and sched is not None and sched.started_at is not None:
        if sched.status == S.RUNNING and quiet(sched.started_at) >= 2 * REPORT_TIMEOUT:
            return (
                "failed: its scheduler runs but never reported to the service (it must reach "
                "the service at the policy's `dask.service_url`)"
            )
    return None


def stop_reason(c: ClusterFacts, rules: Rules, now: datetime) -> str | None:
    """Why a starting or running cluster is stopped now (its owner went away, may no longer
    charge its account, or it is idle); None while it goes on."""
    if not c.may_charge:
        return (
            "stopped: its owner may no longer charge its account (no longer a member of it, "
            "or it was archived)"
        )
    grace = rules.owner_grace
    # Kept with ``shutdown_on_close=False``, it outlives its notebook and its session both;
    # only the idle timeout (below) then stops it.
    ended = c.session_status is None or c.session_status in TERMINAL
    if c.shutdown_on_close and c.session_id is not None and ended:
        since = c.session_ended_at or c.created_at
        if (now - since).total_seconds() >= grace:
            return f"stopped: its session (workload {c.session_id}) ended"
    if c.shutdown_on_close:
        seen = c.client_seen_at or c.created_at
        if (now - seen).total_seconds() >= grace:
            return (
                "stopped: the notebook that made it went away (no heartbeat from its client "
                f"for {_duration(grace)})"
            )
    idle = rules.idle_timeout
    if idle > 0 and c.idle_since is not None and (now - c.idle_since).total_seconds() >= idle:
        return f"stopped: idle for {_duration(idle)} (no client, no task)"
    return None


def resize(c: ClusterFacts, rules: Rules) -> tuple[int, dict[int, str]]:
    """Workers to add, or workers to stop (with the reason), for a running cluster: those
    not yet running first (the least advanced first), then those its scheduler would close
    first (idle, holding little data: Dask's own ``workers_to_close``), then the newest."""
    want = max(0, min(c.workers, rules.max_workers))
    live = c.live_workers
    if len(live) < want:
        return want - len(live), {}
    idle = {wid: rank for rank, wid in enumerate(c.idle_workers)}
    extra = sorted(live, key=lambda m: (m.status, idle.get(m.id, len(idle)), -m.id))[
        : len(live) - want
    ]
    reason = f"stopped: cluster '{c.name}' scaled down to {_workers(want)}"
    return 0, {m.id: reason for m in extra}


def plan(
    c: ClusterFacts, rules: Rules, now: datetime, watching_since: datetime | None = None
) -> Plan:
    """What to do with cluster ``c`` now (pure); ``watching_since``: when the controller
    began watching (silence before it is not the scheduler's)."""
    p = Plan(c.id)
    reason = c.reason
    if c.state in (ClusterState.STARTING, ClusterState.RUNNING):
        found = failure(c) or silence(c, now, watching_since) or stop_reason(c, rules, now)
        if found is None:
            if c.state == ClusterState.RUNNING and c.address is not None:
                p.add, p.cancel = resize(c, rules)
            return p
        p.stop = reason = found
    # Stopping: every workload of it stops; it ends once they all have.
    told = f"stopped with its Dask cluster '{c.name}': {reason}"
    p.cancel = {m.id: told for m in c.members if m.live}
    if p.stop is None and all(m.ended for m in c.members):
        p.end = ClusterState.FAILED if reason.startswith("failed:") else ClusterState.STOPPED
    return p


@dataclass
class PassResult:
    """What one pass wrote: clusters stopped and ended, workers added, workloads stopped."""

    stopped: list[int] = field(default_factory=list)
    ended: list[int] = field(default_factory=list)
    added: dict[int, int] = field(default_factory=dict)
    cancelled: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class _Decided:
    #: Plans that do something, and the clusters they are for (by id).
    plans: list[Plan]
    clusters: dict[int, ClusterFacts]
    #: Dask workloads to stop: their cluster has ended.
    orphans: list[int]


def _decide(
    session: Session, now: datetime, views: ViewCache, watching_since: datetime | None
) -> _Decided:
    view = load_policy_view(session, views)
    rules = Rules.of(view.policy.dask) if view is not None else Rules()
    clusters = {c.id: c for c in live_clusters(session, now, RECENT)}
    plans = [
        p for p in (plan(c, rules, now, watching_since) for c in clusters.values()) if not p.empty
    ]
    return _Decided(plans, clusters, orphans(session))


class DaskClusters:
    """The loop over Dask clusters: one pass every ``interval`` seconds and when nudged."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        wake: Callable[[int], None] = lambda _w: None,
        nudge: Callable[[], None] = lambda: None,
        interval: float = 2.0,
    ) -> None:
        self.db = db
        self.clock = clock
        #: Called with each workload told to stop (the reconciler stops it).
        self.wake = wake
        #: Called after workers were added or work stopped (the scheduler admits, or hands
        #: the room out).
        self.nudge_scheduler = nudge
        self.interval = interval
        self._views: ViewCache = {}
        #: When its first pass ran: a scheduler's silence before it is not held against it.
        self.watching_since: datetime | None = None
        self._poke = asyncio.Event()
        self._one = asyncio.Lock()
        self.outage = OutageLog("Dask clusters' loop", "passes failed", log)

    def nudge(self) -> None:
        """Something about a cluster changed: pass soon."""
        self._poke.set()

    async def run(self) -> None:
        while True:
            interval = self.interval
            try:
                await self.pass_once()
                self.outage.recovered()
            except Exception as e:
                if (outage := classify(e)) is None:
                    log.exception("Dask clusters' pass failed; trying again")
                else:
                    self.outage.failed(outage)
                    interval = self.outage.backoff()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._poke.wait()
            self._poke.clear()

    async def pass_once(self) -> PassResult:
        """One pass over every cluster that has not ended."""
        async with self._one:
            now = self.clock.now()
            if self.watching_since is None:
                self.watching_since = now
            found = await self.db.run_read(
                partial(_decide, now=now, views=self._views, watching_since=self.watching_since)
            )
            if not found.plans and not found.orphans:
                return PassResult()
            done = await self.db.run_write(partial(self._apply, now=now))
        for wid in done.cancelled:
            self.wake(wid)
        if done.added or done.cancelled:
            self.nudge_scheduler()
        return done

    def _apply(self, session: Session, now: datetime) -> PassResult:
        """Decide again, inside the write transaction, and write it all there."""
        found = _decide(session, now, self._views, self.watching_since)
        conn = session.connection()
        done = PassResult()
        for p in found.plans:
            c = found.clusters[p.cluster]
            if p.stop is not None:
                if not to_stopping(conn, c.id, p.stop, now):
                    continue  # stopped meanwhile, for a reason of its own: the next pass
                log.info("Dask cluster %s (%s) %s", c.id, c.name, p.stop)
                done.stopped.append(c.id)
            if p.add and insert_workers(conn, c, p.add, now):
                done.added[c.id] = p.add
            for wid, reason in sorted(p.cancel.items()):
                if workloads.request_stop(conn, wid, reason, now):
                    done.cancelled.append(wid)
            if p.end is not None and to_ended(conn, c.id, p.end, now):
                log.info("Dask cluster %s (%s) ended %s", c.id, c.name, p.end.label)
                done.ended.append(c.id)
        for wid in found.orphans:
            if workloads.request_stop(conn, wid, "stopped: its Dask cluster has ended", now):
                log.warning("stopping workload %s: its Dask cluster has ended", wid)
                done.cancelled.append(wid)
        return done
