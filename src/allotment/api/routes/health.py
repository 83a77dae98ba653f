"""Health, in the shapes load balancers and Kubernetes probes expect. Says nothing about anyone.

- ``health/live``: the process answers (200 always; touches no database). A liveness probe:
  restart the process when it fails.
- ``health/ready``: everything works now: the database can be read, and written (a real
  commit: a full disk under SQLite fails it), the controller completes its cycles on time
  (in this process, or in another one through its heartbeat row; one that has started and
  still recovers is not ready yet), and its reconciler keeps up: no workload admitted has
  waited to start longer than ``BEHIND_SECONDS``. 503 otherwise.
- ``health``: the API can serve now: the database can be read and written (200 or 503).
  JupyterHub's service check and load balancers in front of API processes use it; a controller
  that is behind does not make the API refuse requests (submissions wait, nothing is lost).

Every answer lists each check with ``ok`` and, where it failed, why.

The write check commits, and the health addresses need no token: a flood of probes would
otherwise fight submissions for SQLite's one writer. So its result is shared: one write in
flight at a time, its answer reused for ``FRESH_SECONDS``. The read is made by every probe.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable
from datetime import datetime

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from allotment import __version__
from allotment.api.deps import AppState, StateDep
from allotment.controller.heartbeat import stale_after
from allotment.db.engine import Database
from allotment.db.heartbeat import (
    CONTROLLER,
    PROBE,
    STARTED,
    backlog,
    beat,
    check_read,
    last_beat,
)
from allotment.db.outage import classify

__all__ = ["Check", "Health", "router"]

router = APIRouter(tags=["health"])

#: How long each database check may take before it counts as failed, in seconds.
CHECK_SECONDS = 5.0
#: How long the database checks' result is reused, in seconds.
FRESH_SECONDS = 1.0
#: A workload admitted and not started after this many seconds means the reconciler is
#: behind. A start takes well under a second; a launcher that does not report is given up
#: on after 30 s and the start is tried again, so two minutes is past any healthy start,
#: and short enough that an operator hears of a reconciler that is stuck or starved (a full
#: data directory, a backend that hangs) before researchers do.
BEHIND_SECONDS = 120.0
#: A controller that started this long ago without completing a cycle is stuck or gone.
STARTING_SECONDS = 60.0


class Check(BaseModel):
    name: str
    ok: bool
    #: Why it failed, or what was seen ("last cycle 2 s ago"); None when there is nothing to say.
    reason: str | None = None


class Health(BaseModel):
    #: ``ok``, or ``unavailable`` (the HTTP status is then 503).
    status: str
    version: str
    checks: list[Check]


async def _database(name: str, work: Awaitable[None]) -> Check:
    try:
        async with asyncio.timeout(CHECK_SECONDS):
            await work
    except TimeoutError:
        return Check(name=name, ok=False, reason=f"no answer within {CHECK_SECONDS:g} s")
    except Exception as e:
        outage = classify(e)
        # Never the driver's message: it may name the database's URL.
        reason = outage.detail if outage else f"failed: {type(e).__name__}"
        return Check(name=name, ok=False, reason=reason)
    return Check(name=name, ok=True)


def _age(at: datetime, now: datetime) -> float:
    return max((now - at).total_seconds(), 0.0)


def _starting(at: datetime, now: datetime, where: str) -> Check:
    age = _age(at, now)
    if age > STARTING_SECONDS:
        reason = (
            f"it started {age:.0f} s ago ({where}) and has completed no scheduling cycle "
            "since; it is stuck or gone"
        )
    else:
        reason = f"it started {age:.0f} s ago ({where}) and is still recovering"
    return Check(name="controller", ok=False, reason=reason)


async def _controller(state: AppState) -> Check:
    now = state.clock.now()
    if state.controller is not None:
        scheduling = state.controller.scheduling
        if scheduling.cycled_at is None:
            return Check(name="controller", ok=False, reason="no scheduling cycle completed yet")
        at, stale = scheduling.cycled_at, stale_after(scheduling.interval)
        where = "in this process"
    else:
        try:
            async with asyncio.timeout(CHECK_SECONDS):
                seen = await last_beat(state.db, CONTROLLER)
        except Exception:
            return Check(name="controller", ok=False, reason="its heartbeat cannot be read")
        if seen is None:
            return Check(
                name="controller",
                ok=False,
                reason="no controller has reported on this database; workloads wait until one runs",
            )
        (at, stale), where = seen, "in another process"
        if stale == STARTED:
            return _starting(at, now, where)
    age = _age(at, now)
    if age > stale:
        return Check(
            name="controller",
            ok=False,
            reason=f"its last scheduling cycle completed {age:.0f} s ago ({where}); "
            f"more than {stale:.0f} s means it is stuck or gone",
        )
    return Check(name="controller", ok=True, reason=f"last cycle {age:.0f} s ago ({where})")


async def _backlog(state: AppState) -> Check:
    try:
        async with asyncio.timeout(CHECK_SECONDS):
            seen = await backlog(state.db)
    except Exception:
        return Check(name="controller-backlog", ok=False, reason="it cannot be read")
    if seen.oldest is None:
        return Check(name="controller-backlog", ok=True, reason="no workload waits to start")
    age = _age(seen.oldest, state.clock.now())
    said = f"{seen.waiting} admitted, waiting to start; the oldest for {age:.0f} s"
    if age > BEHIND_SECONDS:
        return Check(
            name="controller-backlog",
            ok=False,
            reason=f"{said}: more than {BEHIND_SECONDS:.0f} s means the controller is behind",
        )
    return Check(name="controller-backlog", ok=True, reason=said)


class _SharedWrite:
    """The write check of one database: one in flight, its result kept ``FRESH_SECONDS`` (see
    the module's docstring). Reads are not shared: they never wait for SQLite's writer, and
    each probe then sees at once a database that stopped answering."""

    def __init__(self) -> None:
        self.at = float("-inf")
        self.result: Check | None = None
        self.running: asyncio.Future[Check] | None = None

    async def check(self, state: AppState) -> Check:
        if self.result is not None and time.monotonic() - self.at < FRESH_SECONDS:
            return self.result
        if self.running is None or self.running.done():
            self.running = asyncio.ensure_future(self._run(state))
        # Shielded: a caller that gives up does not cancel the others' check.
        return await asyncio.shield(self.running)

    async def _run(self, state: AppState) -> Check:
        began = time.monotonic()
        write = await _database("database-write", beat(state.db, PROBE, state.clock.now(), 0.0))
        self.at, self.result = began, write
        return write


_writes: weakref.WeakKeyDictionary[Database, _SharedWrite] = weakref.WeakKeyDictionary()


async def _checks(state: StateDep) -> list[Check]:
    read = await _database("database-read", check_read(state.db))
    if read.ok:
        shared = _writes.get(state.db)
        if shared is None:
            shared = _writes[state.db] = _SharedWrite()
        write = await shared.check(state)
    else:
        write = Check(name="database-write", ok=False, reason="not tried: reading failed")
    return [read, write, await _controller(state), await _backlog(state)]


def _answer(checks: list[Check], needed: set[str]) -> JSONResponse:
    ok = all(c.ok for c in checks if c.name in needed)
    body = Health(status="ok" if ok else "unavailable", version=__version__, checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


_DATABASE = {"database-read", "database-write"}
_RESPONSES: dict[int | str, dict[str, object]] = {
    503: {"model": Health, "description": "A check failed; `checks` says which and why."}
}


@router.get("/health", response_model=Health, responses=_RESPONSES)
async def health(state: StateDep) -> JSONResponse:
    """The API can serve now: the database can be read and written."""
    return _answer(await _checks(state), _DATABASE)


@router.get("/health/ready", response_model=Health, responses=_RESPONSES)
async def ready(state: StateDep) -> JSONResponse:
    """Everything works now: the database can be read and written, and the controller runs
    and keeps up (its last cycle on time, no admitted workload waiting to start too long)."""
    return _answer(await _checks(state), _DATABASE | {"controller", "controller-backlog"})


@router.get("/health/live", response_model=Health)
async def live() -> Health:
    """The process answers; nothing else is checked."""
    return Health(status="ok", version=__version__, checks=[])
