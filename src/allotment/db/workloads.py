"""Every guarded write on a workload, in one module.

Each moves a workload only from the states ``domain.workloads.TRANSITIONS`` allows (``UPDATE …
WHERE status IN (…)``) and says whether it applied: a write that finds the workload elsewhere
(a cancel came first, another controller moved it) changes nothing, and its caller decides what
losing the race means. ``status`` moves towards ``target``; ``request_stop`` is the one write of
the target that users, the scheduler and the culler share.

The writes take a synchronous ``Connection``: the controller runs them inside one
``Database.run_write`` hand-over (several in one transaction where a loop decides many at
once), API routes through ``AsyncSession.run_sync``. The ``*_many`` variants are one
``executemany`` each: the scheduling loop writes thousands of holds per cycle.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypedDict

from sqlalchemy import ColumnElement, Connection, Update, bindparam, case, insert, or_, update

from allotment.db.tables import WORKLOADS
from allotment.domain.workloads import TERMINAL, WorkloadState, can_move, sources

__all__ = [
    "Hold",
    "Rejection",
    "insert_pending",
    "record_activity",
    "record_holds",
    "record_placement",
    "reject_many",
    "step_down",
    "request_stop",
    "record_queued",
    "requeue",
    "to_admitted",
    "to_ended",
    "to_running",
    "to_starting",
    "to_stopping",
    "waiting_for_backend",
    "warn_running",
]

S = WorkloadState
W = WORKLOADS.c


class Hold(TypedDict):
    """Why a pending workload waits, its place and its expected start: one row of
    ``record_holds``' executemany."""

    wid: int
    reason: str
    position: int | None
    eta: datetime | None


class Rejection(TypedDict):
    """A pending workload that can never run, and why: one row of ``reject_many``."""

    wid: int
    reason: str


def _in(states: Iterable[WorkloadState]) -> ColumnElement[bool]:
    values = sorted(int(s) for s in states)
    # One state as ``=``: an expanding IN cannot go in an executemany, and reads worse.
    return W.status == values[0] if len(values) == 1 else W.status.in_(values)


def _from(to: WorkloadState, only: Collection[WorkloadState] | None = None) -> ColumnElement[bool]:
    """The guard of a move to ``to``: every state the domain allows it from, or ``only``
    those (each of which it must allow)."""
    states = sources(to) if only is None else only
    wrong = [s.label for s in states if not can_move(s, to)]
    if wrong:
        raise ValueError(f"a workload does not go from {', '.join(wrong)} to {to.label}")
    return _in(states)


def _wants_run() -> ColumnElement[bool]:
    return W.target == int(S.RUNNING)


def _applied(conn: Connection, statement: Update) -> bool:
    return bool(conn.execute(statement).rowcount)


def to_admitted(conn: Connection, workload: int, node: str, reason: str, now: datetime) -> bool:
    """PENDING → ADMITTED on ``node``, if it is still meant to run."""
    return _applied(
        conn,
        update(WORKLOADS)
        .where(W.id == workload, _from(S.ADMITTED), _wants_run())
        .values(
            status=int(S.ADMITTED),
            node=node,
            reason=reason,
            position=None,
            expected_start=None,
            updated_at=now,
        ),
    )


def to_starting(
    conn: Connection, workload: int, placement: Mapping[str, Any], reason: str, now: datetime
) -> bool:
    """ADMITTED → STARTING with the backend's first placement (written before anything of the
    workload runs), if it is still meant to run: a cancel that came meanwhile wins."""
    return _applied(
        conn,
        update(WORKLOADS)
        .where(W.id == workload, _from(S.STARTING, [S.ADMITTED]), _wants_run())
        .values(status=int(S.STARTING), reason=reason, placement=dict(placement), updated_at=now),
    )


def record_placement(
    conn: Connection, workload: int, placement: Mapping[str, Any], now: datetime
) -> bool:
    """A later checkpoint of a start in progress (no change of state), while STARTING."""
    return _applied(
        conn,
        update(WORKLOADS)
        .where(W.id == workload, _in([S.STARTING]))
        .values(placement=dict(placement), updated_at=now),
    )


def to_running(
    conn: Connection,
    workload: int,
    reason: str,
    now: datetime,
    placement: Mapping[str, Any] | None = None,
    node: str | None = None,
    updated: datetime | None = None,
) -> bool:
    """STARTING → RUNNING, with the running workload's placement where the backend gave one,
    and the node it chose where it places work itself. Not guarded on the target: a workload
    told to stop while starting is running all the same, and is stopped from there.
    ``now`` is when it started (a backend that places work itself may say it started a
    moment before it was seen); ``updated``, when this is written (default: ``now``)."""
    values: dict[str, Any] = {
        "status": int(S.RUNNING),
        "started_at": now,
        "reason": reason,
        "position": None,
        "expected_start": None,
        "updated_at": updated or now,
    }
    if placement is not None:
        values["placement"] = dict(placement)
    if node:
        values["node"] = node
    return _applied(
        conn,
        update(WORKLOADS).where(W.id == workload, _from(S.RUNNING)).values(**values),
    )


def to_stopping(conn: Connection, workload: int, now: datetime) -> bool:
    """STARTING or RUNNING → STOPPING: the backend is about to be told to stop it."""
    return _applied(
        conn,
        update(WORKLOADS)
        .where(W.id == workload, _from(S.STOPPING))
        .values(status=int(S.STOPPING), updated_at=now),
    )


def to_ended(
    conn: Connection,
    workload: int,
    status: WorkloadState,
    expect: Collection[WorkloadState],
    now: datetime,
    *,
    reason: str | None = None,
    exit_code: int | None = None,
) -> bool:
    """One of ``expect`` → ``status`` (STOPPED or FAILED), for good: its target becomes
    STOPPED too. ``reason`` None keeps the reason it has (who asked it to stop)."""
    if status not in TERMINAL:
        raise ValueError(f"a workload ends as stopped or failed, not {status.label}")
    values: dict[str, Any] = {
        "status": int(status),
        "target": int(S.STOPPED),
        "exit_code": exit_code,
        "ended_at": now,
        "updated_at": now,
    }
    if reason is not None:
        values["reason"] = reason
    return _applied(
        conn, update(WORKLOADS).where(W.id == workload, _from(status, expect)).values(**values)
    )


def reject_many(conn: Connection, rejects: Sequence[Rejection], now: datetime) -> None:
    """PENDING → FAILED for each ``{"wid", "reason"}``: it can never run. One executemany."""
    if not rejects:
        return
    conn.execute(
        update(WORKLOADS)
        .where(W.id == bindparam("wid"), _from(S.FAILED, only=[S.PENDING]))
        .values(
            status=int(S.FAILED),
            target=int(S.STOPPED),
            reason=bindparam("reason"),
            position=None,
            expected_start=None,
            ended_at=now,
            updated_at=now,
        ),
        list(rejects),
    )


def record_holds(conn: Connection, holds: Sequence[Hold]) -> None:
    """Why each pending workload waits, its place and its expected start (no change of
    state; ``updated_at`` is left alone, so the queue's churn is not an update). One
    executemany."""
    if not holds:
        return
    conn.execute(
        update(WORKLOADS)
        .where(W.id == bindparam("wid"), _in([S.PENDING]))
        .values(
            reason=bindparam("reason"),
            position=bindparam("position"),
            expected_start=bindparam("eta"),
        ),
        list(holds),
    )


def request_stop(conn: Connection, workload: int, reason: str, now: datetime) -> bool:
    """Target → STOPPED, saying why (a cancel, a preemption, the culler, its maximum
    runtime), if it was still meant to run. A pending workload has nothing to stop: it ends
    at once (PENDING → STOPPED); any other is stopped by the reconciler."""
    pending = W.status == int(S.PENDING)
    return _applied(
        conn,
        update(WORKLOADS)
        .where(W.id == workload, _wants_run(), W.status.not_in([int(s) for s in TERMINAL]))
        .values(
            target=int(S.STOPPED),
            status=case((pending, int(S.STOPPED)), else_=W.status),
            ended_at=case((pending, now), else_=W.ended_at),
            reason=reason,
            updated_at=now,
        ),
    )


def requeue(
    conn: Connection, workload: int, placement: Mapping[str, Any], reason: str, now: datetime
) -> bool:
    """RUNNING → STARTING, saying why: its backend put it back in its own queue through no
    fault of its own (Slurm requeues a batch job whose node failed), and it starts again
    where the backend puts it. Its placement (the same Slurm job) is kept; its run's charge is
    the caller's to close (``db.ledger.close_run``) in the same transaction: the meter charges
    an open charge until its workload ends, so the time queued again would be charged."""
    return _applied(
        conn,
        update(WORKLOADS)
        .where(W.id == workload, _from(S.STARTING, [S.RUNNING]), _wants_run())
        .values(
            status=int(S.STARTING),
            node=None,
            placement=dict(placement),
            started_at=None,
            reason=reason,
            updated_at=now,
        ),
    )


def record_queued(
    conn: Connection,
    workload: int,
    placement: Mapping[str, Any],
    reason: str,
    expected_start: datetime | None,
    position: int | None,
    now: datetime,
) -> bool:
    """A start that ended queued in the backend's own queue (Slurm pending): the placement,
    and the backend's reason and expected start for the researcher, while STARTING."""
    return _applied(
        conn,
        update(WORKLOADS)
        .where(W.id == workload, _in([S.STARTING]))
        .values(
            placement=dict(placement),
            reason=reason,
            expected_start=expected_start,
            position=position,
            updated_at=now,
        ),
    )


def waiting_for_backend(
    conn: Connection, workloads: Collection[int], reason: str, now: datetime
) -> bool:
    """Say on workloads waiting to start why they wait (their backend does not answer), where
    it is not already said."""
    if not workloads:
        return False
    return _applied(
        conn,
        update(WORKLOADS)
        .where(
            W.id.in_(list(workloads)),
            _in([S.ADMITTED, S.STARTING]),
            W.reason != reason,
        )
        .values(reason=reason, updated_at=now),
    )


def insert_pending(conn: Connection, values: Mapping[str, object], indices: Sequence[int]) -> int:
    """A job array: one PENDING workload per index, the first one's id naming the array (and
    keeping the idempotency key); returns that id. Single workloads are inserted in batches by
    ``db/group_commit.py``."""
    first = conn.execute(
        insert(WORKLOADS).values(**values, array_index=indices[0]).returning(W.id)
    ).scalar_one()
    conn.execute(update(WORKLOADS).where(W.id == first).values(array_id=first))
    rest = [
        {**values, "idempotency_key": None, "array_id": first, "array_index": i}
        for i in indices[1:]
    ]
    if rest:
        conn.execute(insert(WORKLOADS), rest)
    return int(first)


def record_activity(conn: Connection, workloads: Collection[int], at: datetime) -> None:
    """Sessions in use at ``at`` (the culler measures idleness from the latest); an older
    report never moves it back."""
    if not workloads:
        return
    conn.execute(
        update(WORKLOADS)
        .where(
            W.id.in_(list(workloads)),
            or_(W.last_activity.is_(None), W.last_activity < at),
        )
        .values(last_activity=at)
    )


def warn_running(conn: Connection, workload: int, reason: str, now: datetime) -> bool:
    """Say why a running workload is about to be stopped or stepped down (a spent budget), if
    it is still running and meant to; nothing else moves."""
    return _applied(
        conn,
        update(WORKLOADS)
        .where(W.id == workload, _in([S.RUNNING]), _wants_run(), W.reason != reason)
        .values(reason=reason, updated_at=now),
    )


def step_down(conn: Connection, workload: int, profile_id: int, reason: str, now: datetime) -> bool:
    """A running workload goes on under ``profile_id`` (a spent budget's ``step_down``): same
    process, charged at that profile's rate and ranked at its priority from now on, if it is
    still running and meant to."""
    return _applied(
        conn,
        update(WORKLOADS)
        .where(W.id == workload, _in([S.RUNNING]), _wants_run())
        .values(profile_id=profile_id, reason=reason, updated_at=now),
    )
