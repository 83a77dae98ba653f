"""Heartbeats: small rows that say a part of the service works, for the readiness check.

The controller may run in another process than the API that is asked whether it is ready,
so it leaves its last completed scheduling cycle here (``CONTROLLER``). The readiness check
writes a row of its own (``PROBE``) and commits it: only a real commit shows that the
database can be written now (a full disk under SQLite fails it, a ``BEGIN`` alone does not).

A row outlives the process that wrote it: a controller started again within a minute would
look ready, by its predecessor's beat, while it still recovers. So a controller first writes
``STARTED`` as its row's ``stale_after`` (``started``), which readiness reads as "started at
``at``, no cycle completed yet", and its first completed cycle overwrites it.

Each beat is one upsert (``INSERT … ON CONFLICT DO UPDATE``, on both databases), so two
processes' first beats of one name never fail each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from allotment.db.engine import Database
from allotment.db.tables import WORKLOADS, Heartbeat
from allotment.domain.workloads import WorkloadState

__all__ = [
    "CONTROLLER",
    "PROBE",
    "STARTED",
    "Backlog",
    "backlog",
    "beat",
    "check_read",
    "last_beat",
    "probe",
    "started",
]

CONTROLLER = "controller"
PROBE = "readiness-probe"
#: ``stale_after`` of a row whose process has started and completed no cycle yet.
STARTED = 0.0


def _beat(session: Session, name: str, at: datetime, stale_after: float) -> None:
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(Heartbeat).values(name=name, at=at, stale_after=stale_after)
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=[Heartbeat.name],
            set_={"at": stmt.excluded.at, "stale_after": stmt.excluded.stale_after},
        )
    )


async def beat(db: Database, name: str, at: datetime, stale_after: float) -> None:
    """Record that ``name`` worked at ``at``; it is stale ``stale_after`` seconds later."""
    await db.run_write(lambda s: _beat(s, name, at, stale_after))


async def started(db: Database, name: str, at: datetime) -> None:
    """``name`` started at ``at`` and has completed nothing yet (its earlier beats, a
    predecessor's, no longer say it works)."""
    await beat(db, name, at, STARTED)


async def check_read(db: Database) -> None:
    """One read of the heartbeats table: raises when the database cannot be read."""
    await db.run_read(lambda s: s.execute(select(Heartbeat.name).limit(1)).all())


async def last_beat(db: Database, name: str) -> tuple[datetime, float] | None:
    """When ``name`` last beat and how long that holds, or None if it never did."""

    def read(session: Session) -> tuple[datetime, float] | None:
        row = session.execute(
            select(Heartbeat.at, Heartbeat.stale_after).where(Heartbeat.name == name)
        ).one_or_none()
        return None if row is None else (row[0], row[1])

    return await db.run_read(read)


async def probe(db: Database, now: datetime) -> None:
    """Read, then write and commit: raises unless the database can do both now."""
    await check_read(db)
    await beat(db, PROBE, now, 0.0)


@dataclass(frozen=True)
class Backlog:
    """Workloads admitted and not yet started (``ADMITTED`` or ``STARTING``): the
    reconciler's work in hand."""

    waiting: int
    #: When the longest waiting of them last changed (was admitted, or began starting);
    #: None when none waits.
    oldest: datetime | None


async def backlog(db: Database) -> Backlog:
    """The reconciler's backlog, read from the database (any process can ask)."""

    def read(session: Session) -> Backlog:
        w = WORKLOADS.c
        waiting = (int(WorkloadState.ADMITTED), int(WorkloadState.STARTING))
        row = session.execute(
            select(func.count(), func.min(w.updated_at)).where(w.status.in_(waiting))
        ).one()
        return Backlog(int(row[0]), row[1])

    return await db.run_read(read)
