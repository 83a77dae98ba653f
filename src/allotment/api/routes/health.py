"""Health, in the shapes load balancers and Kubernetes probes expect. Says nothing about anyone.

- ``health/live``: the process answers (200 always; touches no database). A liveness probe:
  restart the process when it fails.
- ``health/ready``: everything works now: the database can be read, and written (a real
  commit: a full disk under SQLite fails it), and the controller completes its cycles on time
  (in this process, or in another one through its heartbeat row). 503 otherwise.
- ``health``: the API can serve now: the database can be read and written (200 or 503).
  JupyterHub's service check and load balancers in front of API processes use it; a controller
  that is behind does not make the API refuse requests (submissions wait, nothing is lost).

Every answer lists each check with ``ok`` and, where it failed, why.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import datetime

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from allotment import __version__
from allotment.api.deps import AppState, StateDep
from allotment.controller.heartbeat import stale_after
from allotment.db.heartbeat import CONTROLLER, PROBE, beat, check_read, last_beat
from allotment.db.outage import classify

__all__ = ["Check", "Health", "router"]

router = APIRouter(tags=["health"])

#: How long each database check may take before it counts as failed, in seconds.
CHECK_SECONDS = 5.0


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
    age = _age(at, now)
    if age > stale:
        return Check(
            name="controller",
            ok=False,
            reason=f"its last scheduling cycle completed {age:.0f} s ago ({where}); "
            f"more than {stale:.0f} s means it is stuck or gone",
        )
    return Check(name="controller", ok=True, reason=f"last cycle {age:.0f} s ago ({where})")


async def _checks(state: StateDep) -> list[Check]:
    read = await _database("database-read", check_read(state.db))
    if read.ok:
        write = await _database("database-write", beat(state.db, PROBE, state.clock.now(), 0.0))
    else:
        write = Check(name="database-write", ok=False, reason="not tried: reading failed")
    return [read, write, await _controller(state)]


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
    """Everything works now: the database can be read and written, and the controller keeps
    up."""
    return _answer(await _checks(state), _DATABASE | {"controller"})


@router.get("/health/live", response_model=Health)
async def live() -> Health:
    """The process answers; nothing else is checked."""
    return Health(status="ok", version=__version__, checks=[])
