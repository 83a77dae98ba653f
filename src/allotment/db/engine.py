"""The database: engines, sessions and migrations, for SQLite (default) and PostgreSQL.

SQLite runs in WAL mode with ``synchronous=FULL`` so that a committed workload survives a
crash of the process or of the machine. Writers begin with ``BEGIN IMMEDIATE``: SQLite cannot
upgrade a reader to a writer while another writer commits, and would fail the request instead of
waiting. Readers use a second engine and run concurrently with the writer.

The controller's hot paths (a workload's every step, every scheduling cycle) hand a whole
transaction over at once (``run_read``/``run_write``): aiosqlite runs every cursor, execute,
fetch and close as a hand-over to its thread, 8–9 per transaction, each ~0.3 ms on a busy
event loop; a synchronous session on a thread of its own needs one, and what queues behind
it commits together (``_SyncSQLite``). On PostgreSQL the same function runs on the async
session (``AsyncSession.run_sync``).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session, sessionmaker

__all__ = ["Database", "sqlite_url"]

T = TypeVar("T")

MIGRATIONS = Path(__file__).parent / "migrations"


def sqlite_url(data_dir: Path) -> str:
    """URL of the default database inside ``data_dir`` (created with mode 0700)."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return f"sqlite+aiosqlite:///{data_dir / 'allotment.sqlite'}"


def _async_url(url: str) -> str:
    u = make_url(url)
    if u.drivername in ("sqlite", "sqlite+pysqlite"):
        u = u.set(drivername="sqlite+aiosqlite")
    elif u.drivername in ("postgresql", "postgres", "postgresql+psycopg2", "postgresql+psycopg"):
        u = u.set(drivername="postgresql+asyncpg")
    return u.render_as_string(hide_password=False)


def _sqlite_events(engine: Engine, begin: str) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let the "begin" hook below issue BEGIN
        cur = dbapi_conn.cursor()
        for pragma in (
            "journal_mode=WAL",
            "synchronous=FULL",
            "foreign_keys=ON",
            "busy_timeout=30000",
        ):
            cur.execute(f"PRAGMA {pragma}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(begin)


def _sqlite_engine(url: str, begin: str) -> AsyncEngine:
    engine = create_async_engine(url, connect_args={"timeout": 30})
    _sqlite_events(engine.sync_engine, begin)
    return engine


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():  # its caller was cancelled; the work was done all the same
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class _SyncSQLite:
    """A synchronous engine and the one thread that uses it: a transaction handed over once.

    Work that arrives while the thread is busy is done together, in one transaction, when it
    is free (group commit): one BEGIN, one COMMIT and one fsync for the lot. Each piece of a
    writer's batch runs in a savepoint of its own, so one that fails is undone alone, and no
    caller hears of its work before the commit.
    """

    def __init__(self, url: str, begin: str, name: str, *, writes: bool) -> None:
        u = make_url(url).set(drivername="sqlite+pysqlite")
        # One connection, used by one thread only: no pool to hand connections between threads.
        self.engine = create_engine(
            u, connect_args={"timeout": 30, "check_same_thread": False}, pool_size=1
        )
        _sqlite_events(self.engine, begin)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.writes = writes
        self._waiting: list[tuple[Callable[[Session], Any], asyncio.Future[Any]]] = []
        self._lock = threading.Lock()

    async def run(self, fn: Callable[[Session], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            self._waiting.append((fn, future))
            first = len(self._waiting) == 1
        if first:
            self.thread.submit(self._batch, loop)
        return await future

    def _batch(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            batch, self._waiting = self._waiting, []
        done: list[tuple[asyncio.Future[Any], bool, Any]] = []
        try:
            with self.sessions() as session, session.begin():
                for fn, future in batch:
                    try:
                        if self.writes and len(batch) > 1:
                            with session.begin_nested():
                                done.append((future, True, fn(session)))
                        else:
                            done.append((future, True, fn(session)))
                    except Exception as e:
                        if len(batch) == 1:
                            raise
                        done.append((future, False, e))
                    # No ORM object is shared between two callers' work.
                    session.expunge_all()
        except Exception as e:  # the transaction itself failed: none of it happened
            done = [(future, False, e) for _, future in batch]
        for future, ok, value in done:
            loop.call_soon_threadsafe(_settle, future, ok, value)

    def close(self) -> None:
        self.thread.submit(self.engine.dispose).result()
        self.thread.shutdown()


class Database:
    """One database, with a session for reading and one for writing."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = _async_url(url)
        self.dialect = make_url(self.url).get_backend_name()
        if self.dialect == "sqlite":
            path = make_url(self.url).database
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                if not Path(path).exists():
                    # Create it private before SQLite does, with the umask's permissions.
                    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
                    os.close(fd)
            self.writer = _sqlite_engine(self.url, "BEGIN IMMEDIATE")
            self.reader = _sqlite_engine(self.url, "BEGIN")
        else:
            self.writer = create_async_engine(
                self.url, pool_size=pool_size, max_overflow=pool_size, pool_recycle=3600
            )
            self.reader = self.writer
        self._write = async_sessionmaker(self.writer, expire_on_commit=False)
        self._read = async_sessionmaker(self.reader, expire_on_commit=False)
        #: SQLite's one-hand-over paths, made on first use (a file's; ``:memory:`` is one
        #: database per connection, so it stays on the async session).
        self._sync: dict[str, _SyncSQLite] = {}
        self._handover = self.dialect == "sqlite" and make_url(self.url).database not in (
            None,
            "",
            ":memory:",
        )

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A session for queries; nothing it does is committed."""
        async with self._read() as session:
            yield session

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A session whose work is committed when the block ends without an error."""
        async with self._write() as session, session.begin():
            yield session

    async def run_read(self, fn: Callable[[Session], T]) -> T:
        """``fn(session)`` in one read transaction; nothing it does is committed."""
        if self._handover:
            return await self._sqlite("BEGIN").run(fn)
        async with self.read() as session:
            return await session.run_sync(fn)

    async def run_write(self, fn: Callable[[Session], T]) -> T:
        """``fn(session)`` in one write transaction, committed when it returns."""
        if self._handover:
            return await self._sqlite("BEGIN IMMEDIATE").run(fn)
        async with self.write() as session:
            return await session.run_sync(fn)

    def _sqlite(self, begin: str) -> _SyncSQLite:
        found = self._sync.get(begin)
        if found is None:
            name = "allotment-db-write" if "IMMEDIATE" in begin else "allotment-db-read"
            found = self._sync[begin] = _SyncSQLite(
                self.url, begin, name, writes="IMMEDIATE" in begin
            )
        return found

    async def upgrade(self) -> None:
        """Bring the schema to the newest migration."""
        async with self.writer.begin() as conn:
            await conn.run_sync(_upgrade)

    async def dispose(self) -> None:
        for sync in self._sync.values():
            await asyncio.get_running_loop().run_in_executor(None, sync.close)
        self._sync.clear()
        await self.writer.dispose()
        if self.reader is not self.writer:
            await self.reader.dispose()


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def _upgrade(connection: Connection) -> None:
    command.upgrade(alembic_config(connection), "head")
