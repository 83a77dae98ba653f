"""Every guarded write of ``db/workloads.py`` against every state a workload can be in, on
both databases: each applies exactly where ``domain.workloads.TRANSITIONS`` (and its guard on
the target) allows it and changes nothing elsewhere, and together they make every allowed
move and no other.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import product
from typing import Any

import pytest
from sqlalchemy import Connection, insert, select
from sqlalchemy.orm import Session

from allotment.db import workloads as wl
from allotment.db.engine import Database
from allotment.db.tables import WORKLOADS, Account, Pool, Profile, User
from allotment.domain.workloads import TERMINAL, TRANSITIONS, can_move, sources
from allotment.domain.workloads import WorkloadState as S

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
LATER = NOW + timedelta(minutes=5)
PLACEMENT = {"pid": 42, "run": "w1.1"}
RUN, STOP = S.RUNNING, S.STOPPED


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    await database.upgrade()

    def seed(session: Session) -> None:
        session.add(Account(id=1, name="lab", path="lab", created_at=NOW))
        session.add(User(id=1, name="alice", created_at=NOW))
        session.add(Pool(id=1, name="ws", backend="local", spec={}))
        session.flush()
        session.add(Profile(id=1, name="cheap", pool_id=1, spec={}))
        session.flush()  # run_write commits the connection; the session's adds need a flush

    await database.run_write(seed)
    yield database
    await database.dispose()


def _values(status: S, target: S) -> dict[str, Any]:
    return {
        "kind": "job",
        "user_id": 1,
        "account_id": 1,
        "pool_id": 1,
        "millicpus": 1000,
        "memory": 2**30,
        "gpus": {},
        "status": int(status),
        "target": int(target),
        "reason": "as it was",
        "created_at": NOW,
        "updated_at": NOW,
        "node": "ws1" if status != S.PENDING else None,
        "placement": {"pid": 1} if status in (S.STARTING, S.RUNNING, S.STOPPING) else None,
    }


async def _workload(db: Database, status: S, target: S) -> int:
    def add(session: Session) -> int:
        stmt = insert(WORKLOADS).values(**_values(status, target)).returning(WORKLOADS.c.id)
        return int(session.execute(stmt).scalar_one())

    return await db.run_write(add)


async def _row(db: Database, wid: int) -> dict[str, Any]:
    def read(session: Session) -> dict[str, Any]:
        row = session.execute(select(WORKLOADS).where(WORKLOADS.c.id == wid)).mappings().one()
        return dict(row)

    return await db.run_read(read)


@dataclass(frozen=True)
class Write:
    name: str
    #: Applies it to a workload; True where it says it applied (None: it does not say).
    apply: Callable[[Connection, int], bool | None]
    #: Whether it must apply to a workload in (status, target).
    applies: Callable[[S, S], bool]
    #: The (status, target) it leaves where it applied.
    after: Callable[[S, S], tuple[S, S]]


def _moves(to: S, *, wants_run: bool = False) -> Callable[[S, S], bool]:
    return lambda s, t: can_move(s, to) and (t == RUN or not wants_run)


WRITES = [
    Write(
        "to_admitted",
        lambda c, w: wl.to_admitted(c, w, "ws1", "admitted to ws1", LATER),
        _moves(S.ADMITTED, wants_run=True),
        lambda s, t: (S.ADMITTED, t),
    ),
    Write(
        "to_starting",
        lambda c, w: wl.to_starting(c, w, PLACEMENT, "starting on ws1", LATER),
        lambda s, t: s == S.ADMITTED and t == RUN,
        lambda s, t: (S.STARTING, t),
    ),
    Write(
        "record_placement",
        lambda c, w: wl.record_placement(c, w, PLACEMENT, LATER),
        lambda s, t: s == S.STARTING,
        lambda s, t: (s, t),
    ),
    Write(
        "to_running",
        lambda c, w: wl.to_running(c, w, "running on ws1", LATER, PLACEMENT),
        _moves(S.RUNNING),
        lambda s, t: (S.RUNNING, t),
    ),
    Write(
        "to_stopping",
        lambda c, w: wl.to_stopping(c, w, LATER),
        _moves(S.STOPPING),
        lambda s, t: (S.STOPPING, t),
    ),
    Write(
        "request_stop",
        lambda c, w: wl.request_stop(c, w, "cancelled by alice", LATER),
        lambda s, t: t == RUN and s not in TERMINAL,
        lambda s, t: (S.STOPPED if s == S.PENDING else s, STOP),
    ),
    Write(
        "requeue",
        lambda c, w: wl.requeue(c, w, {"job_id": "7"}, "requeued by Slurm: node n1 failed", LATER),
        lambda s, t: s == S.RUNNING and t == RUN,
        lambda s, t: (S.STARTING, t),
    ),
    Write(
        "reject_many",
        lambda c, w: wl.reject_many(c, [{"wid": w, "reason": "cannot run: too big"}], LATER),
        lambda s, t: s == S.PENDING,
        lambda s, t: (S.FAILED, STOP),
    ),
    Write(
        "warn_running",
        lambda c, w: wl.warn_running(c, w, "lab's budget is spent", LATER),
        lambda s, t: s == S.RUNNING and t == RUN,
        lambda s, t: (s, t),
    ),
    Write(
        "step_down",
        lambda c, w: wl.step_down(c, w, 1, "stepped down to cheap", LATER),
        lambda s, t: s == S.RUNNING and t == RUN,
        lambda s, t: (s, t),
    ),
    Write(
        "record_holds",
        lambda c, w: wl.record_holds(
            c, [{"wid": w, "reason": "waiting", "position": 3, "eta": LATER}]
        ),
        lambda s, t: s == S.PENDING,
        lambda s, t: (s, t),
    ),
    *(
        Write(
            f"to_ended({end.label} from {start.label})",
            lambda c, w, end=end, start=start: wl.to_ended(
                c, w, end, (start,), LATER, reason="exited with status 1", exit_code=1
            ),
            lambda s, t, start=start: s == start,
            lambda s, t, end=end: (end, STOP),
        )
        for start, end in product(S, TERMINAL)
        if can_move(start, end)
    ),
]

STATES = [(s, t) for s in S for t in (RUN, STOP)]


async def test_every_write_applies_where_the_transitions_allow_and_nowhere_else(
    db: Database,
) -> None:
    made: set[tuple[S, S]] = set()
    for write, (status, target) in product(WRITES, STATES):
        wid = await _workload(db, status, target)
        said = await db.run_write(
            lambda session, write=write, wid=wid: write.apply(session.connection(), wid)
        )
        row = await _row(db, wid)
        where = f"{write.name} on a {status.label} workload meant to be {target.label}"
        expected = write.applies(status, target)
        if said is not None:
            assert said == expected, where
        now = (S(row["status"]), S(row["target"]))
        if not expected:
            assert now == (status, target), where
            assert row["updated_at"] == NOW and row["reason"] == "as it was", where
            continue
        assert now == write.after(status, target), where
        if now[0] != status:
            assert can_move(status, now[0]), where
            made.add((status, now[0]))
    allowed = {(s, to) for s, targets in TRANSITIONS.items() for to in targets}
    assert made == allowed


async def test_what_each_move_records(db: Database) -> None:
    async def move(status: S, target: S, fn: Callable[[Connection, int], object]) -> dict[str, Any]:
        wid = await _workload(db, status, target)
        await db.run_write(lambda session: fn(session.connection(), wid))
        return await _row(db, wid)

    row = await move(S.PENDING, RUN, lambda c, w: wl.to_admitted(c, w, "ws2", "admitted", LATER))
    assert (row["node"], row["reason"], row["position"], row["updated_at"]) == (
        "ws2",
        "admitted",
        None,
        LATER,
    )
    row = await move(S.ADMITTED, RUN, lambda c, w: wl.to_starting(c, w, PLACEMENT, "s", LATER))
    assert row["placement"] == PLACEMENT
    row = await move(S.STARTING, RUN, lambda c, w: wl.to_running(c, w, "r", LATER))
    assert row["started_at"] == LATER and row["placement"] == {"pid": 1}  # kept
    row = await move(S.PENDING, RUN, lambda c, w: wl.request_stop(c, w, "cancelled", LATER))
    assert row["ended_at"] == LATER and row["reason"] == "cancelled"
    row = await move(S.RUNNING, RUN, lambda c, w: wl.request_stop(c, w, "idle", LATER))
    assert row["ended_at"] is None and S(row["status"]) == S.RUNNING
    row = await move(
        S.RUNNING, RUN, lambda c, w: wl.requeue(c, w, {"job_id": "7"}, "node failed", LATER)
    )
    assert (row["node"], row["placement"], row["started_at"], row["reason"]) == (
        None,
        {"job_id": "7"},
        None,
        "node failed",
    )
    # Stopped on request: the reason stays who asked.
    row = await move(
        S.STOPPING, STOP, lambda c, w: wl.to_ended(c, w, S.STOPPED, [S.STOPPING], LATER)
    )
    assert row["reason"] == "as it was" and row["ended_at"] == LATER


async def test_moves_the_transitions_refuse_cannot_be_written(db: Database) -> None:
    wid = await _workload(db, S.STOPPED, STOP)
    with pytest.raises(ValueError, match="does not go from stopped to failed"):
        await db.run_write(
            lambda session: wl.to_ended(session.connection(), wid, S.FAILED, [S.STOPPED], LATER)
        )
    with pytest.raises(ValueError, match="ends as stopped or failed"):
        await db.run_write(
            lambda session: wl.to_ended(session.connection(), wid, S.RUNNING, [S.STARTING], LATER)
        )
    assert sources(S.STARTING) == {S.ADMITTED, S.RUNNING}


async def test_an_array_is_inserted_pending_and_activity_only_moves_forward(db: Database) -> None:
    values = {k: v for k, v in _values(S.PENDING, RUN).items() if k not in ("status", "target")}
    values |= {"status": int(S.PENDING), "target": int(RUN), "idempotency_key": "k1"}

    def add(session: Session) -> int:
        return wl.insert_pending(session.connection(), values, [0, 4, 9])

    first = await db.run_write(add)
    rows = [await _row(db, first + i) for i in range(3)]
    assert [(r["array_id"], r["array_index"]) for r in rows] == [(first, 0), (first, 4), (first, 9)]
    assert [r["idempotency_key"] for r in rows] == ["k1", None, None]
    assert {S(r["status"]) for r in rows} == {S.PENDING}

    for at in (LATER, NOW):  # an older report never moves it back
        await db.run_write(
            lambda session, at=at: wl.record_activity(session.connection(), [first], at)
        )
    assert (await _row(db, first))["last_activity"] == LATER
