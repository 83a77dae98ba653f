"""Heartbeats: small rows that say a part of the service works, for the readiness check.

The controller may run in another process than the API that is asked whether it is ready,
so it leaves its last completed scheduling cycle here (``CONTROLLER``). The readiness check
writes a row of its own (``PROBE``) and commits it: only a real commit shows that the
database can be written now (a full disk under SQLite fails it, a ``BEGIN`` alone does not).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from allotment.db.engine import Database
from allotment.db.tables import Heartbeat

__all__ = ["CONTROLLER", "PROBE", "beat", "check_read", "last_beat", "probe"]

CONTROLLER = "controller"
PROBE = "readiness-probe"


def _beat(session: Session, name: str, at: datetime, stale_after: float) -> None:
    done = session.execute(
        update(Heartbeat)
        .where(Heartbeat.name == name)
        .values(at=at, stale_after=stale_after)
        .execution_options(synchronize_session=False)
    )
    if done.rowcount == 0:  # type: ignore[attr-defined]
        # The first beat of this name: a concurrent first beat of another process makes
        # one of the two fail, and its next beat updates.
        session.execute(insert(Heartbeat).values(name=name, at=at, stale_after=stale_after))


async def beat(db: Database, name: str, at: datetime, stale_after: float) -> None:
    """Record that ``name`` worked at ``at``; it is stale ``stale_after`` seconds later."""
    await db.run_write(lambda s: _beat(s, name, at, stale_after))


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
