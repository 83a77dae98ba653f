"""The controller's one-hand-over transactions (``Database.run_read``/``run_write``) on both
databases. On SQLite, work that queues while the writer is busy commits together: each piece
must still succeed or fail on its own, and be durable when its caller hears of it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from allotment.db.engine import Database
from allotment.db.tables import User


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    await database.upgrade()
    yield database
    await database.dispose()


def _add(name: str, pause: float = 0.0):  # type: ignore[no-untyped-def]
    def write(session: Session) -> int:
        time.sleep(pause)  # holds the writer while others queue behind it
        user = User(name=name, created_at=datetime.now(UTC))
        session.add(user)
        session.flush()
        return user.id

    return write


def _names(session: Session) -> list[str]:
    return sorted(session.scalars(select(User.name)))


async def test_queued_writes_each_commit_and_fail_alone(db: Database) -> None:
    await db.run_write(_add("taken"))

    def bad(session: Session) -> None:
        session.add(User(name="half-done", created_at=datetime.now(UTC)))
        session.flush()
        session.add(User(name="taken", created_at=datetime.now(UTC)))  # unique: fails
        session.flush()

    results = await asyncio.gather(
        db.run_write(_add("first", pause=0.2)),
        *(db.run_write(_add(f"u{i}")) for i in range(5)),
        db.run_write(bad),
        db.run_write(_add("last")),
        return_exceptions=True,
    )
    assert isinstance(results[6], IntegrityError)
    ids = [r for i, r in enumerate(results) if i != 6]
    assert all(isinstance(i, int) for i in ids) and len(set(ids)) == len(ids)
    # Everything but the failed piece is in, and none of the failed piece's work.
    names = await db.run_read(_names)
    assert names == sorted(["taken", "first", "last", *(f"u{i}" for i in range(5))])
    async with db.read() as session:  # and visible to other connections: committed
        assert (await session.execute(select(func.count()).select_from(User))).scalar() == 8


async def test_a_failing_write_alone_changes_nothing(db: Database) -> None:
    def fails(session: Session) -> None:
        session.add(User(name="ghost", created_at=datetime.now(UTC)))
        session.flush()
        raise ValueError("changed my mind")

    with pytest.raises(ValueError, match="changed my mind"):
        await db.run_write(fails)
    assert await db.run_read(_names) == []


async def test_queued_reads_get_their_own_objects(db: Database) -> None:
    """Two callers reading the same row in one batch must not share (and so mutate) one ORM
    object."""
    await db.run_write(_add("alice"))

    def read(session: Session) -> User:
        return session.scalars(select(User).where(User.name == "alice")).one()

    def slow(session: Session) -> None:
        time.sleep(0.2)  # the two reads below queue behind this one

    _, first, second = await asyncio.gather(db.run_read(slow), db.run_read(read), db.run_read(read))
    assert first.name == second.name == "alice"
    assert first is not second
