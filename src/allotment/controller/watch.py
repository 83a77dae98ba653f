"""The watch over running workloads: every ``poll_interval`` it polls each backend for all of
them at once, hands those that ended to the reconciler, records the sessions in use, and stops
what the culler's rules say must stop (idle sessions, workloads past their maximum runtime).

Backends that can tell at once when a workload ends (``Backend.watch``) make the poll a safety
net; for the others it is how an end is seen.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import partial
from typing import Any, TypeAlias

from sqlalchemy import Row, select
from sqlalchemy.orm import Session

from allotment.backends.base import Backend, BackendUnavailable, Placement
from allotment.clock import Clock
from allotment.controller.culler import CpuWatch, idle_sessions, overdue
from allotment.controller.view import PolicyView, ViewCache, load_policy_view
from allotment.db import workloads
from allotment.db.engine import Database
from allotment.db.outage import OutageLog, classify
from allotment.db.tables import Pool, Workload
from allotment.domain.workloads import WorkloadKind
from allotment.domain.workloads import WorkloadState as S

__all__ = ["Watch"]

log = logging.getLogger("allotment.controller")

_RUNNING = (
    select(
        Workload.id,
        Workload.placement,
        Workload.started_at,
        Workload.max_runtime,
        Workload.target,
        Pool.backend,
        Workload.kind,
        Workload.last_activity,
    )
    .join(Pool, Pool.id == Workload.pool_id)
    .where(Workload.status == int(S.RUNNING))
)


#: One running workload as ``_RUNNING`` reads it.
_Running: TypeAlias = (
    "Row[int, dict[str, Any] | None, datetime | None, int | None, int, str, str, datetime | None]"
)


class Watch:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        backends: Mapping[str, Backend],
        reconcile: Callable[[int], None],
        interval: float,
    ) -> None:
        self.db = db
        self.clock = clock
        #: The controller's backends (the same mapping: those it builds at start count).
        self.backends = backends
        #: Hands a workload to the reconciler (it ended, or it must stop).
        self.reconcile = reconcile
        self.interval = interval
        self._views: ViewCache = {}
        self._cpu = CpuWatch()
        #: The database's outages, logged once each.
        self.outage = OutageLog("watch over running workloads", "polls failed", log)
        #: Backends that could not be polled last time (``BackendUnavailable``).
        self._unavailable: set[str] = set()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.poll_once()
                self.outage.recovered()
            except Exception as e:
                if (outage := classify(e)) is None:
                    log.exception("polling running workloads failed; trying again")
                else:
                    self.outage.failed(outage)

    async def poll_once(self) -> None:
        """One poll of every running workload: ended ones, idle sessions, maximum runtimes."""
        now = self.clock.now()

        def read(session: Session) -> tuple[Sequence[_Running], PolicyView | None]:
            rows = session.execute(_RUNNING).all()
            return rows, load_policy_view(session, self._views)

        running, view = await self.db.run_read(read)
        by_backend: dict[str, dict[int, Placement]] = {}
        stops: dict[int, str] = {}
        sessions: dict[int, tuple[datetime, datetime | None]] = {}
        for wid, placement, started, max_runtime, target, backend, kind, last in running:
            meant_to_run = target == S.RUNNING
            if kind == WorkloadKind.SESSION and meant_to_run and started is not None:
                sessions[wid] = (started, last)
            if backend not in self.backends or not placement:
                continue
            by_backend.setdefault(backend, {})[wid] = placement
            reason = overdue(started, max_runtime, now) if meant_to_run else None
            if reason is not None:
                stops[wid] = reason
        used: list[int] = []
        mono = time.monotonic()
        for name, placements in by_backend.items():
            try:
                seen = await self.backends[name].poll(placements)
            except BackendUnavailable as e:
                # Nothing is concluded about work it cannot see; said once per outage.
                if name not in self._unavailable:
                    log.warning("cannot see the workloads of the %s backend: %s", name, e)
                self._unavailable.add(name)
                continue
            if name in self._unavailable:
                self._unavailable.discard(name)
                log.info("the %s backend answers again", name)
            for wid, obs in seen.items():
                if not obs.alive or obs.requeued:
                    self.reconcile(wid)
                elif wid in sessions and obs.cpu_seconds is not None:
                    if self._cpu.busy(wid, obs.cpu_seconds, mono):
                        used.append(wid)
        self._cpu.keep(set(sessions))
        cull_idle = view.policy.sessions.cull_idle if view else 0
        idle = idle_sessions(sessions, used, now, cull_idle)
        if used:
            await self.db.run_write(lambda s: workloads.record_activity(s.connection(), used, now))
        # One reason each: a session both idle and overdue stops as idle.
        for reasons in (idle, {w: r for w, r in stops.items() if w not in idle}):
            if reasons:
                await self.db.run_write(partial(_request_stops, reasons=reasons, now=now))
                for wid in reasons:
                    self.reconcile(wid)


def _request_stops(session: Session, *, reasons: Mapping[int, str], now: datetime) -> None:
    conn = session.connection()
    for wid, reason in reasons.items():
        workloads.request_stop(conn, wid, reason, now)
