"""The controller: the scheduling loop, the reconciler's workers and the watch over running
workloads, in the service's process.

Exactly one controller runs per installation (``lock.py``). At start it recovers: every
workload caught mid-lifecycle by a crash is reconciled again, and anything the backends still
hold that no active workload accounts for is reaped. Its pieces each have one job: the
scheduling loop (``scheduling.py``) admits, the reconciler's workers (``workers.py``) drive
each workload towards its target through its backend, the watch (``watch.py``) polls running
workloads and applies the culler's rules; this module wires them together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from allotment.backends.base import Backend
from allotment.backends.registry import backends_for
from allotment.backends.slurm.backend import SlurmBackend
from allotment.clock import Clock
from allotment.controller.budgets import BudgetWatch
from allotment.controller.capacity import read_capacity
from allotment.controller.dask_clusters import DaskClusters
from allotment.controller.heartbeat import keep_beating
from allotment.controller.lock import ControllerLock, take_lock
from allotment.controller.meter import Meter
from allotment.controller.notify import Notifier
from allotment.controller.nudge import NudgeListener
from allotment.controller.reconciler import Reconciler, Row, read_rows
from allotment.controller.scheduling import SchedulingLoop
from allotment.controller.slurm_mirror import SlurmMirror
from allotment.controller.slurm_usage import SlurmUsageImport
from allotment.controller.view import PolicyView, load_policy_view
from allotment.controller.watch import Watch
from allotment.controller.workers import Workers
from allotment.controller.workqueue import WorkQueue
from allotment.db.engine import Database
from allotment.db.heartbeat import CONTROLLER, started
from allotment.db.tables import Pool, Workload
from allotment.domain.workloads import ACTIVE
from allotment.installation import installation_of

__all__ = ["Controller", "ControllerSettings"]

log = logging.getLogger("allotment.controller")


@dataclass(frozen=True)
class ControllerSettings:
    data_dir: Path
    #: Reconciler workers: starts and stops in flight at once.
    workers: int = 8
    #: Seconds between full polls of running workloads (exits are also seen at once where the
    #: backend can watch them).
    poll_interval: float = 5.0
    #: ``service.installation``; None: derived from ``data_dir`` (``allotment.installation``).
    installation: str | None = None


class Controller:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        settings: ControllerSettings,
        backends: Mapping[str, Backend] | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.settings = settings
        #: By name (a pool's ``backend:``); given none (None), built from the registry at
        #: start, for the policy in force.
        self.backends: dict[str, Backend] = dict(backends or {})
        self._build_backends = backends is None
        self.queue: WorkQueue[int] = WorkQueue()
        self.scheduling = SchedulingLoop(
            db,
            clock,
            self._driven,
            on_admit=self._admitted,
            read_admitted=read_rows,
            capacity=lambda: read_capacity(self.backends),
            placed_elsewhere=self._placed_elsewhere,
        )
        self.reconciler = Reconciler(db, self.backends, clock, freed=self._freed)
        self.workers = Workers(self.queue, self.reconciler)
        self.watch = Watch(db, clock, self.backends, self.queue.add, settings.poll_interval)
        #: Raises budget alerts and stops (or steps down) the running work of a spent budget
        #: after its grace (``budgets.py``); ``poke()`` it after a meter pass.
        self.budget_watch = BudgetWatch(
            db,
            clock,
            wake=self.queue.add,
            nudge=self.scheduling.budgets_changed,
            alerted=lambda: self.notifier.nudge(),
        )
        #: Charges running workloads every ``accounting.interval`` (``meter.py``).
        self.meter = Meter(db, clock, self.backends, on_pass=self.budget_watch.poke)
        self.reconciler.close_charge = self.meter.close_run
        #: Delivers budget alerts' e-mails and webhooks (``notify.py``); ``nudge()`` it after
        #: queueing some.
        self.notifier = Notifier(db, clock)
        #: Keeps each Dask cluster's workers at what it asks for, and stops clusters whose
        #: owner went away or that sit idle (``dask_clusters.py``); ``nudge()`` reaches it.
        self.dask = DaskClusters(db, clock, wake=self.queue.add, nudge=self.scheduling.nudge)
        self._tasks: list[asyncio.Task[None]] = []
        #: Where a Slurm backend runs (``_slurm_tasks``): its accounts mirror and usage import.
        self.slurm_mirror: SlurmMirror | None = None
        self.slurm_import: SlurmUsageImport | None = None
        self._lock: ControllerLock | None = None
        #: Submissions taken by API processes without the controller reach it through this.
        self._nudges = NudgeListener(settings.data_dir, self.nudge)

    def _driven(self, view: PolicyView) -> Collection[str]:
        return [pool for pool, backend in view.backends.items() if backend in self.backends]

    def _placed_elsewhere(self, view: PolicyView) -> Collection[str]:
        """Pools whose backend places and starts work itself (Slurm)."""
        return [
            pool
            for pool, name in view.backends.items()
            if (b := self.backends.get(name)) is not None and b.places_itself
        ]

    # -- life -------------------------------------------------------------------------------

    def acquire(self) -> bool:
        """Take the installation's controller lock and claim its name; False when another
        process of this installation holds the lock (NameInUse: another installation holds
        the name)."""
        data_dir = self.settings.data_dir
        self._lock = take_lock(data_dir, installation_of(self.settings.installation, data_dir))
        return self._lock is not None

    async def start(self) -> bool:
        """Recover and start the loops; False (and nothing started) without the lock."""
        if not self.acquire():
            log.info("another process runs the controller")
            return False
        # Readiness must not take a predecessor's last beat for this one's (db/heartbeat.py).
        await started(self.db, CONTROLLER, self.clock.now())
        view = await self.db.run_read(load_policy_view)
        if view is not None:
            self.reconciler.stop_grace = float(view.policy.scheduling.stop_grace)
            if self._build_backends:
                self.backends.update(
                    backends_for(
                        view.policy,
                        self.settings.data_dir,
                        installation=self.settings.installation,
                    )
                )
        await self.recover()
        self._nudges.open()
        self._tasks = self._slurm_tasks() + [
            asyncio.create_task(self.scheduling.run(), name="scheduling"),
            asyncio.create_task(self.watch.run(), name="watch"),
            asyncio.create_task(self.budget_watch.run(), name="budget-watch"),
            asyncio.create_task(self.meter.run(), name="meter"),
            asyncio.create_task(keep_beating(self.db, self.scheduling), name="heartbeat"),
            asyncio.create_task(self.notifier.run(), name="notify"),
            asyncio.create_task(self.dask.run(), name="dask-clusters"),
            *(
                asyncio.create_task(self.workers.run(), name=f"reconcile-{i}")
                for i in range(self.settings.workers)
            ),
        ]
        log.info("controller started; backends: %s", ", ".join(self.backends) or "none")
        return True

    def _slurm_tasks(self) -> list[asyncio.Task[None]]:
        """Where Slurm pools run: the mirror of accounts into Slurm and the import of jobs
        submitted to it directly (each looks at the policy in force on every pass)."""
        slurm = self.backends.get("slurm")
        if not isinstance(slurm, SlurmBackend):
            return []
        installation = installation_of(self.settings.installation, self.settings.data_dir)
        self.slurm_mirror = SlurmMirror(self.db, self.clock, installation, slurm.runner)
        self.slurm_import = SlurmUsageImport(
            self.db, self.clock, slurm.runner, installation=installation
        )
        return [
            asyncio.create_task(self.slurm_mirror.run(), name="slurm-mirror"),
            asyncio.create_task(self.slurm_import.run(), name="slurm-import"),
        ]

    async def stop(self) -> None:
        """Stop the loops; running workloads keep running and are found again next start."""
        self._nudges.close()
        await self.queue.close()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        for b in self.backends.values():
            await b.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def nudge(self) -> None:
        """Something changed (a submission, a cancel, a Dask cluster): schedule soon."""
        self.scheduling.nudge()
        self.dask.nudge()

    def _freed(self) -> None:
        """A workload ended: its room may go to another, and its cluster may replace it."""
        self.scheduling.nudge()
        self.dask.nudge()

    def _admitted(self, workload: int, row: Row | None) -> None:
        if row is not None:
            self.reconciler.prime(row)
        self.queue.add(workload)

    def wake(self, workload: int) -> None:
        """A workload's target changed: reconcile it now."""
        self.queue.add(workload)
        self.scheduling.nudge()

    async def poll_once(self) -> None:
        """One poll of running workloads (``Watch.poll_once``): ended ones, idle sessions,
        maximum runtimes."""
        await self.watch.poll_once()

    async def recover(self) -> None:
        async with self.db.read() as session:
            rows = await session.execute(
                select(Workload.id, Pool.backend)
                .join(Pool, Pool.id == Workload.pool_id)
                .where(Workload.status.in_([int(s) for s in ACTIVE]))
            )
            active = {wid: backend for wid, backend in rows}
        for wid, backend in active.items():
            if backend in self.backends:
                self.queue.add(wid)
        for name, b in self.backends.items():
            mine = {w for w, backend in active.items() if backend == name}
            for wid in await b.present() - mine:
                log.warning("reaping workload %s: %s holds it but it is not active", wid, name)
                await b.reap(wid)
