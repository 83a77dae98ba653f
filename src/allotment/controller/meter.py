"""The meter: every ``accounting.interval`` it charges every running workload up to now
(``db/ledger.meter_pass``), in one transaction, so budgets, the quote, fair share and reports
are never further behind than that (docs/design/0004-ledger.md).

Measured use (CPU seconds, peak memory) is asked of the backends at most once per pass,
before the database work and timed apart from it: a slow backend delays the measurements,
never the charges' correctness.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import partial

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from allotment.backends.base import Backend, Placement
from allotment.clock import Clock
from allotment.controller.quote import rates_of
from allotment.controller.view import PolicyView, ViewCache, load_policy_view
from allotment.db.engine import Database
from allotment.db.ledger import Pass, Price, close_run, meter_pass
from allotment.db.outage import OutageLog, classify
from allotment.db.tables import PolicyVersion, Pool, Workload
from allotment.domain.ledger import Measured, hourly_micros
from allotment.domain.resources import Resources
from allotment.domain.workloads import WorkloadState as S
from allotment.scheduler.usage import dominant_share

__all__ = ["Meter"]

log = logging.getLogger("allotment.controller")

#: Seconds between passes while no policy says (``accounting.interval``'s default).
DEFAULT_INTERVAL = 60.0


@dataclass(frozen=True)
class _Context:
    view: PolicyView
    version: int
    #: Pool id → name.
    pools: dict[int, str]
    #: Running workloads' placements by backend, for measuring.
    placements: dict[str, dict[int, Placement]]


class Meter:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        backends: Mapping[str, Backend],
        on_pass: Callable[[], None] = lambda: None,
    ) -> None:
        self.db = db
        self.clock = clock
        #: Called after each pass that charged: the budget watch looks at once.
        self.on_pass = on_pass
        #: The controller's backends (the same mapping: those it builds at start count).
        self.backends = backends
        self._views: ViewCache = {}
        #: The policy version whose prices the open charges were last compared with; None:
        #: not yet (a new meter compares them all once).
        self._priced: int | None = None
        self.interval = DEFAULT_INTERVAL
        #: The last pass, and how long its measuring and its database work took (seconds).
        self.last: Pass | None = None
        self.measure_seconds = 0.0
        self.pass_seconds = 0.0
        self.outage = OutageLog("meter", "passes failed", log)

    async def run(self) -> None:
        while True:
            try:
                await self.pass_once()
                self.outage.recovered()
                self.on_pass()
            except Exception as e:
                if (outage := classify(e)) is None:
                    log.exception("charging running workloads failed; trying again")
                else:
                    self.outage.failed(outage)
            await asyncio.sleep(self.interval)

    async def pass_once(self, now: datetime | None = None) -> Pass:
        """Charge every running workload up to ``now`` (the clock's, by default)."""
        context = await self.db.run_read(partial(self._read, measuring=self._measures()))
        if context is None:
            return Pass()
        accounting = context.view.policy.accounting
        self.interval = float(accounting.interval)
        mono = time.monotonic()
        measured = await self._measure(context.placements)
        self.measure_seconds = time.monotonic() - mono
        at = now or self.clock.now()
        done = await self.db.run_write(
            partial(
                meter_pass,
                now=at,
                entry_seconds=int(accounting.entry),
                tz=accounting.time_zone,
                price_of=_prices(context),
                reprice_all=context.version != self._priced,
                measured=measured,
            )
        )
        self.pass_seconds = time.monotonic() - mono - self.measure_seconds
        self._priced = context.version
        self.last = done
        return done

    def close_run(self, session: Session, workload: int, at: datetime) -> None:
        """Charge a workload's run through ``at`` and close its charge, in ``session`` (the
        transaction that requeues it: ``db.ledger.close_run``)."""
        context = self._read(session, measuring=False)
        if context is None:
            return
        accounting = context.view.policy.accounting
        close_run(
            session,
            workload,
            at=at,
            now=at,
            tz=accounting.time_zone,
            entry_seconds=int(accounting.entry),
            price_of=_prices(context),
        )

    def _measures(self) -> bool:
        return any(type(b).measure is not Backend.measure for b in self.backends.values())

    def _read(self, session: Session, *, measuring: bool) -> _Context | None:
        view = load_policy_view(session, self._views)
        if view is None:
            return None
        version = session.execute(select(func.max(PolicyVersion.id))).scalar_one()
        pools = {i: name for i, name in session.execute(select(Pool.id, Pool.name))}
        placements: dict[str, dict[int, Placement]] = defaultdict(dict)
        if measuring:
            rows = session.execute(
                select(Workload.id, Workload.placement, Pool.backend)
                .join(Pool, Pool.id == Workload.pool_id)
                .where(Workload.status == int(S.RUNNING))
            )
            for wid, placement, backend in rows:
                if placement and backend in self.backends:
                    placements[backend][wid] = placement
        return _Context(view, version, pools, dict(placements))

    async def _measure(self, placements: dict[str, dict[int, Placement]]) -> dict[int, Measured]:
        out: dict[int, Measured] = {}
        for name, some in placements.items():
            try:
                out.update(await self.backends[name].measure(some))
            except Exception:  # measuring is a nicety: charging goes on without it
                log.exception("measuring the workloads of backend %s failed", name)
        return out


def _prices(context: _Context) -> partial[Price]:
    capacity: dict[str, Resources] = defaultdict(Resources)
    for n in context.view.nodes:
        capacity[n.pool] = capacity[n.pool] + n.capacity
    return partial(_price, context.view, context.pools, dict(capacity))


def _price(
    view: PolicyView,
    pools: Mapping[int, str],
    capacity: Mapping[str, Resources],
    pool_id: int | None,
    requested: Resources,
) -> Price:
    """An hour of ``requested`` at its pool's rates now; nothing for a pool the policy no
    longer has (it is charged nothing rather than at a guess)."""
    name = pools.get(pool_id) if pool_id is not None else None
    if name is None or name not in view.policy.pools:
        return Price(0, 0.0)
    rate = hourly_micros(rates_of(view.policy, name), requested)
    return Price(rate, dominant_share(requested, capacity.get(name, Resources())))
