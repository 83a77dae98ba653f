"""The controller: the scheduling loop, the reconciler's workers and the watch over running
workloads, in the service's process.

Exactly one controller runs per installation: with ``allot serve --workers N`` every worker
process tries a lock on ``<data_dir>/controller.lock`` and only its holder runs one. At start it
recovers: every workload caught mid-lifecycle by a crash is reconciled again, and anything the
backends still hold that no active workload accounts for is reaped.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO

from sqlalchemy import or_, select, update

from allotment.backends.base import Backend
from allotment.backends.local.backend import LocalBackend
from allotment.backends.local.cgroups import detect
from allotment.backends.local.posix import PosixAccounts
from allotment.clock import Clock
from allotment.config.models import Policy
from allotment.controller.culler import CpuWatch, idle_deadline
from allotment.controller.reconciler import Reconciler, Row, read_rows
from allotment.controller.scheduling import SchedulingLoop
from allotment.controller.view import ACTIVE, PolicyView, ViewCache, load_policy_view
from allotment.controller.workqueue import WorkQueue
from allotment.db.engine import Database
from allotment.db.tables import Pool, Workload
from allotment.domain.quantities import format_duration
from allotment.domain.resources import Resources
from allotment.domain.workloads import WorkloadState as S
from allotment.installation import name_for

__all__ = ["Controller", "ControllerSettings", "local_backend", "nudge_path", "nudge_other"]


def nudge_path(data_dir: Path) -> Path:
    return data_dir / "controller.nudge"


def nudge_other(data_dir: Path) -> None:
    """From a process without the controller: ask the one that has it to schedule soon."""
    path = nudge_path(data_dir)
    try:
        os.utime(path)
    except FileNotFoundError:
        with contextlib.suppress(OSError):
            path.touch(mode=0o600)


log = logging.getLogger("allotment.controller")


@dataclass(frozen=True)
class ControllerSettings:
    data_dir: Path
    #: Reconciler workers: starts and stops in flight at once.
    workers: int = 8
    #: Seconds between full polls of running workloads (exits are also seen at once where the
    #: backend can watch them).
    poll_interval: float = 5.0


def local_backend(policy: Policy, data_dir: Path) -> LocalBackend | None:
    """The backend for the policy's local pools (this machine), or None when it has none."""
    local = [spec for spec in policy.pools.values() if spec.backend == "local"]
    nodes = [n for spec in local for n in spec.nodes]
    if not nodes:
        return None
    tmp_dir = next((spec.tmp_dir for spec in local if spec.tmp_dir), None)
    n = nodes[0]
    gpus: dict[str, int] = {}
    for node in nodes:
        for model, count in node.gpus.items():
            gpus[model] = gpus.get(model, 0) + count
    declared = Resources.of(n.cpus, n.memory, gpus)
    accounts = PosixAccounts(existing=policy.identity.existing_accounts)
    return LocalBackend(
        data_dir / "local",
        n.name,
        declared,
        detect(),
        accounts,
        installation=policy.service.installation or name_for(data_dir),
        tmp_base=Path(tmp_dir) if tmp_dir else None,
    )


class Controller:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        settings: ControllerSettings,
        backends: dict[str, Backend] | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.settings = settings
        self.backends: dict[str, Backend] = dict(backends or {})
        self.queue: WorkQueue[int] = WorkQueue()
        self.scheduling = SchedulingLoop(
            db,
            clock,
            self._driven,
            on_admit=self._admitted,
            read_admitted=read_rows,
            nudge_file=nudge_path(settings.data_dir),
        )
        self.reconciler = Reconciler(
            db,
            self.backends,
            clock,
            freed=self.scheduling.nudge,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._views: ViewCache = {}
        self._cpu = CpuWatch()
        self._lock: IO[str] | None = None

    def _driven(self, view: PolicyView) -> Collection[str]:
        return [pool for pool, backend in view.backends.items() if backend in self.backends]

    # -- life -------------------------------------------------------------------------------

    def acquire(self) -> bool:
        """Take the installation's controller lock; False when another process holds it."""
        path = self.settings.data_dir / "controller.lock"
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        f = open(path, "a")  # noqa: SIM115 - held open for the controller's life
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            return False
        os.chmod(path, 0o600)
        self._lock = f
        return True

    async def start(self) -> bool:
        """Recover and start the loops; False (and nothing started) without the lock."""
        if not self.acquire():
            log.info("another process runs the controller")
            return False
        if not self.backends:
            view = await self.db.run_read(load_policy_view)
            if view is not None:
                policy = view.policy
                self.reconciler.stop_grace = float(policy.scheduling.stop_grace)
                local = local_backend(policy, self.settings.data_dir)
                if local is not None:
                    self.backends["local"] = local
        await self.recover()
        self._tasks = [
            asyncio.create_task(self.scheduling.run(), name="scheduling"),
            asyncio.create_task(self._watch(), name="watch"),
            *(
                asyncio.create_task(self._work(), name=f"reconcile-{i}")
                for i in range(self.settings.workers)
            ),
        ]
        log.info("controller started; backends: %s", ", ".join(self.backends) or "none")
        return True

    async def stop(self) -> None:
        """Stop the loops; running workloads keep running and are found again next start."""
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
        """Something changed (a submission, a cancel): schedule soon."""
        self.scheduling.nudge()

    def _admitted(self, workload: int, row: Row | None) -> None:
        if row is not None:
            self.reconciler.prime(row)
        self.queue.add(workload)

    def wake(self, workload: int) -> None:
        """A workload's target changed: reconcile it now."""
        self.queue.add(workload)
        self.scheduling.nudge()

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

    # -- loops ------------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            wid = await self.queue.get()
            try:
                running = await self.reconciler.reconcile(wid)
            except Exception as e:
                delay = self.queue.retry(wid)
                log.warning("workload %s: %s; again in %.2g s", wid, e, delay)
            else:
                self.queue.done(wid)
                if running is not None:
                    backend, placement = running
                    backend.watch(wid, placement, self._exited)

    def _exited(self, workload: int) -> None:
        self.reconciler.exited(workload)
        self.queue.add(workload)

    async def _watch(self) -> None:
        """Poll every running workload now and then; stop those past their maximum runtime."""
        while True:
            await asyncio.sleep(self.settings.poll_interval)
            try:
                await self._poll_once()
            except Exception:
                log.exception("polling running workloads failed; trying again")

    @staticmethod
    def _idle(
        sessions: dict[int, tuple[datetime, datetime | None]],
        used: list[int],
        now: datetime,
        cull_idle: int,
    ) -> dict[int, str]:
        """Sessions unused for ``cull_idle`` seconds, with the reason they stop."""
        out = {}
        for wid, (started, last) in sessions.items():
            deadline = idle_deadline(started, last, cull_idle)
            if wid in used or deadline is None or now < deadline:
                continue
            since = max(started, last) if last else started
            out[wid] = (
                f"stopped after {format_duration(cull_idle)} unused (no browser, kernel or "
                f"CPU activity since {since:%H:%M} UTC)"
            )
        return out

    async def _poll_once(self) -> None:
        now = self.clock.now()
        async with self.db.read() as session:
            rows = await session.execute(
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
            running = list(rows)
            view = await session.run_sync(load_policy_view, self._views)
        by_backend: dict[str, dict[int, dict[str, object]]] = {}
        overdue: list[tuple[int, int]] = []
        sessions = {
            row.id: (row.started_at, row.last_activity)
            for row in running
            if row.kind == "session" and row.target == S.RUNNING and row.started_at is not None
        }
        for wid, placement, started, max_runtime, target, backend, _, _ in running:
            if backend not in self.backends or not placement:
                continue
            by_backend.setdefault(backend, {})[wid] = placement
            if (
                max_runtime
                and started is not None
                and target == S.RUNNING
                and (now - started).total_seconds() > max_runtime
            ):
                overdue.append((wid, max_runtime))
        used: list[int] = []
        mono = time.monotonic()
        for name, placements in by_backend.items():
            seen = await self.backends[name].poll(placements)
            for wid, obs in seen.items():
                if not obs.alive:
                    self.queue.add(wid)
                elif wid in sessions and obs.cpu_seconds is not None:
                    if self._cpu.busy(wid, obs.cpu_seconds, mono):
                        used.append(wid)
        self._cpu.keep(set(sessions))
        idle = self._idle(sessions, used, now, view.policy.sessions.cull_idle if view else 0)
        if used:
            async with self.db.write() as session:
                await session.execute(
                    update(Workload)
                    .where(
                        Workload.id.in_(used),
                        or_(Workload.last_activity.is_(None), Workload.last_activity < now),
                    )
                    .values(last_activity=now)
                )
        if idle:
            async with self.db.write() as session:
                for wid, reason in idle.items():
                    await session.execute(
                        update(Workload)
                        .where(Workload.id == wid, Workload.target == int(S.RUNNING))
                        .values(target=int(S.STOPPED), reason=reason, updated_at=now)
                    )
            for wid in idle:
                self.queue.add(wid)
        if overdue:
            async with self.db.write() as session:
                for wid, limit in overdue:
                    await session.execute(
                        update(Workload)
                        .where(Workload.id == wid, Workload.target == int(S.RUNNING))
                        .values(
                            target=int(S.STOPPED),
                            reason=f"reached its maximum runtime ({format_duration(limit)})",
                            updated_at=now,
                        )
                    )
            for wid, _ in overdue:
                self.queue.add(wid)
