"""The reconciler: drives one workload's ``status`` towards its ``target`` through its backend.

Every step is written to the database *before* the next action, with a guard on the state it
expects (the guarded writes of ``db/workloads.py``: ``UPDATE … WHERE status IN …``), so a
crash at any point leaves a row from which the same code resumes, and a race with a cancel or
a preemption loses cleanly:

    admitted ──(write STARTING)──> start: each placement written as it comes ──> RUNNING
    told to stop ──(write STOPPING)──> stop ──> observe ──> STOPPED / FAILED ──> release
    running ──(backend says it ended)──> STOPPED / FAILED ──> release

A resumed ``start`` hands the backend the last placement written, and the backend finds the
workload instead of starting it again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Concatenate, ParamSpec

from sqlalchemy import Connection, bindparam, select
from sqlalchemy.orm import Session

from allotment.backends.base import (
    Backend,
    BackendUnavailable,
    LaunchSpec,
    Observation,
    Placement,
)
from allotment.clock import Clock
from allotment.controller.failpoints import failpoint
from allotment.db.engine import Database
from allotment.db.outage import classify
from allotment.db.tables import Account, Pool, User, Workload
from allotment.db.workloads import (
    record_placement,
    record_queued,
    requeue,
    to_ended,
    to_running,
    to_starting,
    to_stopping,
    waiting_for_backend,
)
from allotment.domain.resources import Resources
from allotment.domain.workloads import WorkloadState as S

__all__ = ["Reconciler", "Row", "read_rows"]

log = logging.getLogger("allotment.controller")

P = ParamSpec("P")

#: Failed attempts to start before a workload is given up as FAILED.
MAX_START_FAILURES = 5


@dataclass(frozen=True)
class Row:
    workload: Workload
    user: str
    account: str
    backend: str
    pool: str = ""


_ROWS = (
    select(Workload, User.name, Account.path, Pool.backend, Pool.name)
    .join(User, User.id == Workload.user_id)
    .join(Account, Account.id == Workload.account_id)
    .join(Pool, Pool.id == Workload.pool_id)
)
#: Built once: constructing the statement cost more than running it, once per reconcile.
_LOAD = _ROWS.where(Workload.id == bindparam("wid"))


def read_rows(session: Session, workloads: Collection[int]) -> dict[int, Row]:
    """Workloads as the reconciler acts on them. The scheduling loop reads those it admits in
    the transaction that admits them, so that their start does not begin with a read."""
    found = session.execute(_ROWS.where(Workload.id.in_(workloads)))
    return {r[0].id: Row(*r) for r in found}


def _outputs(w: Workload) -> tuple[str | None, str | None]:
    """Output paths with Slurm-style patterns filled in: %j workload, %A array, %a index."""

    def fill(path: str | None) -> str | None:
        if path is None:
            return None
        return (
            path.replace("%j", str(w.id))
            .replace("%A", str(w.array_id if w.array_id is not None else w.id))
            .replace("%a", str(w.array_index if w.array_index is not None else 0))
        )

    return fill(w.stdout), fill(w.stderr)


def launch_spec(row: Row) -> LaunchSpec:
    w = row.workload
    env: dict[str, str] = {str(k): str(v) for k, v in (w.env or {}).items()}
    env["ALLOT_JOB_ID"] = str(w.id)
    if w.array_id is not None:
        env["ALLOT_ARRAY_JOB_ID"] = str(w.array_id)
        env["ALLOT_ARRAY_TASK_ID"] = str(w.array_index)
    out, err = _outputs(w)
    if out is None and w.array_id is not None:
        base = w.workdir
        out = os.path.join(base, f"allot-{w.array_id}_{w.array_index}.out") if base else None
        err = os.path.join(base, f"allot-{w.array_id}_{w.array_index}.err") if base else None
    return LaunchSpec(
        workload=w.id,
        user=row.user,
        account=row.account,
        command=list(w.command or ()),
        resources=Resources(w.millicpus, w.memory, w.gpus or {}),
        node=w.node or "",
        workdir=w.workdir,
        stdout=out,
        stderr=err,
        env=env,
        max_runtime=w.max_runtime,
        kind=w.kind,
        nodes=w.nodes,
        pool=row.pool,
    )


#: How far back a backend's own start time is believed (a job Slurm started before it was
#: seen): within the meter's slack, so that the run is still found and charged from there.
START_BELIEVED = timedelta(minutes=4)


def _started(placement: Placement | None, now: datetime) -> datetime:
    """When it started: the backend's word where it gives one (``"started_at"``, Unix
    seconds: Slurm's start, up to a poll interval before it was seen), else now."""
    at = (placement or {}).get("started_at")
    if not isinstance(at, int | float) or at <= 0:
        return now
    return min(now, max(datetime.fromtimestamp(at, tz=now.tzinfo), now - START_BELIEVED))


class _Moved(Exception):
    """The workload moved on before a write that expected it where it was: roll it back."""


class Reconciler:
    def __init__(
        self,
        db: Database,
        backends: Mapping[str, Backend],
        clock: Clock,
        *,
        stop_grace: float = 30.0,
        freed: Callable[[], None] = lambda: None,
        close_charge: Callable[[Session, int, datetime], None] | None = None,
    ) -> None:
        self.db = db
        self.backends = backends
        self.clock = clock
        self.stop_grace = stop_grace
        #: Called when a workload gives its resources back: the scheduler may admit more.
        self.freed = freed
        #: Closes a run's charge in the transaction that requeues its workload (the meter's
        #: ``close_run``); None where nothing is charged (tests of the reconciler alone).
        self.close_charge = close_charge
        self.start_failures: dict[int, int] = {}
        #: Workloads this process started, as it left them (RUNNING): when the backend says one
        #: ended, its end is recorded without reading it again. A cancel racing that end loses:
        #: the workload ended on its own first.
        self._started: dict[int, Row] = {}
        self._exited: set[int] = set()
        #: Rows read as they were admitted, for their first pass (``prime``).
        self._primed: dict[int, Row] = {}

    def prime(self, row: Row) -> None:
        """The workload as it was admitted: its first pass starts from this, not a read. A
        cancel that came meanwhile still wins: the first write is guarded on the target."""
        self._primed[row.workload.id] = row

    def exited(self, workload: int) -> None:
        """The backend saw the workload end (``Backend.watch``)."""
        self._exited.add(workload)

    async def load(self, workload: int) -> Row | None:
        def read(session: Session) -> Row | None:
            found = session.execute(_LOAD, {"wid": workload}).first()
            return None if found is None else Row(*found)

        return await self.db.run_read(read)

    async def _write(
        self, move: Callable[Concatenate[Connection, P], bool], *args: P.args, **kw: P.kwargs
    ) -> bool:
        """Run one guarded write of ``db/workloads.py``; True when it applied."""
        return await self.db.run_write(lambda session: move(session.connection(), *args, **kw))

    async def reconcile(self, workload: int) -> tuple[Backend, Placement] | None:
        """One pass; returns the backend and placement of a workload it left running."""
        if workload in self._exited:
            self._exited.discard(workload)
            known = self._started.pop(workload, None)
            backend = self.backends.get(known.backend) if known else None
            if known is not None and backend is not None:
                assert known.workload.placement is not None
                seen = (await backend.poll({workload: known.workload.placement}))[workload]
                if not seen.alive:
                    await self._ended(known, backend, seen, S.RUNNING)
                    return None
        primed = self._primed.pop(workload, None)
        row = primed or await self.load(workload)
        if row is None:
            return None
        w = row.workload
        status, target = S(w.status), S(w.target)
        backend = self.backends.get(row.backend)
        if backend is None or status in (S.PENDING, S.STOPPED, S.FAILED):
            return None
        if target >= S.STOPPING or status == S.STOPPING:
            await self._stop(row, backend)
        elif status == S.STARTING and (w.placement or {}).get("queued"):
            # Waiting in the backend's own queue: resumed, which never submits again and says
            # whether it started (even where it has ended since: it ran, so it is recorded
            # running, with the backend's start, and charged); one that ended there before it
            # started (cancelled in Slurm, failed at launch) ends here.
            placement = await self._start(row, backend)
            if placement is None:
                return None
            if placement.get("queued"):
                seen = (await backend.poll({w.id: placement}))[w.id]
                if not seen.alive:
                    await self._ended(row, backend, seen, S.STARTING)
                    return None
            return backend, placement
        elif status in (S.ADMITTED, S.STARTING):
            placement = await self._start(row, backend)
            if placement is None and primed is not None:
                return await self.reconcile(workload)  # it changed since: act on it as it is
            return None if placement is None else (backend, placement)
        elif status == S.RUNNING:
            assert w.placement is not None
            seen = (await backend.poll({w.id: w.placement}))[w.id]
            if seen.requeued:
                return await self._requeued(row, backend, seen)
            if seen.alive:
                return backend, w.placement
            await self._ended(row, backend, seen, S.RUNNING)
        return None

    async def _requeued(
        self, row: Row, backend: Backend, seen: Observation
    ) -> tuple[Backend, Placement] | None:
        """Its backend put it back in its own queue (a Slurm node failed): its run is over
        and charged up to now; it waits to start again, as a queued start."""
        w = row.workload
        self._started.pop(w.id, None)
        assert w.placement is not None
        placement = {**w.placement, "running": False, "queued": True, "waiting": seen.reason}
        now = self.clock.now()

        def move(session: Session) -> bool:
            # The run's charge first, while its start is on record (a run shorter than a
            # meter pass has no open charge yet: it is charged from that start), then the move,
            # which forgets the start; a move that no longer applies undoes both.
            if self.close_charge is not None:
                self.close_charge(session, w.id, now)
            if not requeue(session.connection(), w.id, placement, seen.reason, now):
                raise _Moved
            return True

        try:
            await self.db.run_write(move)
        except _Moved:
            return None
        log.info("workload %s: %s", w.id, seen.reason)
        self.freed()
        return backend, placement

    async def _start(self, row: Row, backend: Backend) -> Placement | None:
        """Start it; the running workload's placement, or None when it did not start."""
        w = row.workload
        resume = w.placement if w.status == S.STARTING else None
        spec = launch_spec(row)
        placement: Placement | None = resume
        first = w.status == S.ADMITTED
        try:
            async for placement in backend.start(spec, resume):
                if placement.get("queued"):
                    break  # the last: accepted into the backend's own queue
                failpoint("launched" if "pid" in placement else "placing")
                if first:
                    # The first checkpoint comes before anything runs: written together with
                    # STARTING, guarded on ADMITTED (a cancel may have come meanwhile).
                    first = False
                    if not await self._write(
                        to_starting, w.id, placement, f"starting on {w.node}", self.clock.now()
                    ):
                        await backend.release(w.id, placement)
                        return None
                    failpoint("starting")
                elif not placement.get("running"):
                    await self._write(record_placement, w.id, placement, self.clock.now())
                failpoint("placed")
        except BackendUnavailable as e:
            # Tried again with backoff, never counted: not the workload's failure. Those who
            # wait for it are told why.
            await self._write(waiting_for_backend, [w.id], str(e), self.clock.now())
            raise
        except Exception as e:
            if classify(e) is not None:
                # The database went away under a write of this start (its STARTING, a
                # placement): not the workload's failure either. Resumed from what was written.
                raise
            n = self.start_failures.get(w.id, 0) + 1
            self.start_failures[w.id] = n
            log.warning("workload %s: start attempt %s failed: %s", w.id, n, e)
            if n < MAX_START_FAILURES:
                raise
            reason = f"could not start: {e}"
            await self._write(
                to_ended, w.id, S.FAILED, (S.ADMITTED, S.STARTING), self.clock.now(), reason=reason
            )
            if placement is not None:
                await backend.release(w.id, placement)
            self.freed()
            return None
        self.start_failures.pop(w.id, None)
        if placement is not None and placement.get("queued"):
            await self._queued(row, placement, first)
            return placement
        node = str(placement.get("node") or "") if placement is not None else ""
        where = node or w.node
        now = self.clock.now()
        await self._write(
            to_running,
            w.id,
            f"running on {where}",
            _started(placement, now),
            placement,
            node or None,
            now,
        )
        failpoint("running")
        if placement is not None:
            w.status, w.placement = S.RUNNING, dict(placement)
            self._started[w.id] = row
        return placement

    async def _queued(self, row: Row, placement: Placement, first: bool) -> None:
        """Record a start that ended in the backend's own queue: its reason, expected start
        and place, shown to the researcher while it waits there."""
        w = row.workload
        now = self.clock.now()
        if first and not await self._write(
            to_starting, w.id, placement, str(placement.get("waiting") or ""), now
        ):
            return
        eta = placement.get("eta")
        try:
            expected = datetime.fromisoformat(str(eta)) if eta else None
        except ValueError:
            expected = None
        position = placement.get("position")
        await self._write(
            record_queued,
            w.id,
            placement,
            str(placement.get("waiting") or "queued"),
            expected,
            position if isinstance(position, int) else None,
            now,
        )

    async def _stop(self, row: Row, backend: Backend) -> None:
        w = row.workload
        if w.status == S.ADMITTED or (w.status == S.STARTING and not w.placement):
            # Nothing of it can be running yet (the first placement precedes any launch), but
            # a start cut short by a crash may have made its cgroups or run directory.
            if await self._write(
                to_ended, w.id, S.STOPPED, (S.ADMITTED, S.STARTING), self.clock.now()
            ):
                self.freed()
                await backend.reap(w.id)
            return
        if w.status != S.STOPPING and not await self._write(to_stopping, w.id, self.clock.now()):
            return
        failpoint("stopping")
        assert w.placement is not None
        await backend.stop(w.id, w.placement, self.stop_grace)
        failpoint("stopped")
        seen = (await backend.poll({w.id: w.placement}))[w.id]
        await self._ended(row, backend, seen, S.STOPPING, told=True)

    async def _ended(
        self, row: Row, backend: Backend, seen: Observation, expect: S, *, told: bool = False
    ) -> None:
        """Record how it ended, then free what it held."""
        w = row.workload
        self._started.pop(w.id, None)
        # Stopped on request: STOPPED whatever its exit status, keeping who asked as the reason,
        # unless it had already failed on its own.
        out_of_memory = seen.reason.startswith("out of memory")
        failed = seen.failed and (not told or out_of_memory)
        status = S.FAILED if failed else S.STOPPED
        reason = seen.reason if not told or out_of_memory else None
        if reason is None and seen.how_stopped:  # who asked, then how it had to be stopped
            reason = f"{w.reason}; {seen.how_stopped}" if w.reason else seen.how_stopped
        if await self._write(
            to_ended,
            w.id,
            status,
            (expect,),
            self.clock.now(),
            reason=reason,
            exit_code=seen.exit_code,
        ):
            failpoint("ended")
            self.freed()  # its processes are gone: the scheduler may hand its share out now
            assert w.placement is not None
            await backend.release(w.id, w.placement)
