"""When the database is unavailable: recognising it, and saying so once.

A stopped PostgreSQL, a lost connection, a full disk under SQLite or a writer that holds the
lock past its timeout is not a bug in Allotment: the API answers 503 with ``Retry-After``
(``api/problems.py``) and the controller's loops wait and try again. ``classify`` tells such
an outage from a real error; ``OutageLog`` logs it once when it starts and once when it ends,
with how many requests or attempts met it, instead of a traceback each time.

The text of an ``Outage`` is shown to researchers and written to logs: it is built from what
kind of failure it was, never from the driver's message, which may name the database's URL.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import asyncpg.exceptions as pg  # type: ignore[import-untyped]
from sqlalchemy import exc as sa

__all__ = ["Outage", "OutageKind", "OutageLog", "classify"]

OutageKind = Literal["unavailable", "disk_full", "busy"]

#: Errors of the connection itself (connect or send), not of what was asked over it.
_CONNECTION_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ETIMEDOUT,
    errno.EPIPE,
    errno.ENOTCONN,
}

#: How many links of ``__cause__``/``__context__``/``.orig`` are followed.
_DEPTH = 12


@dataclass(frozen=True)
class Outage:
    """The database cannot be used now; trying again later should work."""

    kind: OutageKind
    #: For the researcher and the log: "the database is unavailable: connection refused".
    detail: str
    #: Seconds a client should wait before trying again (``Retry-After``).
    retry_after: int = 5


def _unavailable(why: str) -> Outage:
    return Outage("unavailable", f"the database is unavailable: {why}")


DISK_FULL = Outage(
    "disk_full",
    "the disk holding the database is full; an administrator must free space",
    retry_after=10,
)
BUSY = Outage(
    "busy",
    "the database is busy: another process held its write lock past the time allowed",
    retry_after=2,
)


def _sqlite(e: sqlite3.Error) -> Outage | None:
    text = str(e).lower()
    if "disk is full" in text or "database or disk is full" in text:
        return DISK_FULL
    if "database is locked" in text or "database is busy" in text:
        return BUSY
    if "disk i/o error" in text:
        return _unavailable("its disk reported an input/output error")
    if "unable to open database file" in text:
        return _unavailable("its file cannot be opened")
    return None


def _postgres(e: pg.PostgresError) -> Outage | None:
    if isinstance(e, pg.DiskFullError):
        return DISK_FULL
    if isinstance(e, pg.TooManyConnectionsError):
        return _unavailable("it has no connection free")
    if isinstance(e, pg.PostgresConnectionError):
        return _unavailable("the connection to it was lost")
    if isinstance(e, pg.QueryCanceledError):
        return None  # a statement timeout: this query's own problem
    if isinstance(e, pg.OperatorInterventionError):
        return _unavailable("it is shutting down or starting up")
    if isinstance(e, pg.ReadOnlySQLTransactionError):
        return _unavailable("it accepts no writes (a read-only standby?)")
    return None


def _one(e: BaseException) -> Outage | None:
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return DISK_FULL
    if isinstance(e, sqlite3.Error):
        return _sqlite(e)
    if isinstance(e, pg.PostgresError):
        return _postgres(e)
    if isinstance(e, pg.InterfaceError) and "closed" in str(e):
        return _unavailable("the connection to it was closed")
    if isinstance(e, ConnectionRefusedError):
        return _unavailable("connection refused")
    if isinstance(e, OSError) and e.errno in _CONNECTION_ERRNOS:
        return _unavailable(f"the connection failed ({errno.errorcode.get(e.errno or 0, '?')})")
    if isinstance(e, sa.TimeoutError):
        return _unavailable("no connection to it came free in time")
    if isinstance(e, sa.DBAPIError) and e.connection_invalidated:
        return _unavailable("the connection to it was lost")
    return None


def classify(exc: BaseException) -> Outage | None:
    """The outage ``exc`` reports, or None when it is an error of another kind.

    Follows the driver's original error (``.orig``) and the chain of causes, since SQLAlchemy
    and asyncpg wrap what the socket or SQLite said.
    """
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo and len(seen) < _DEPTH:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        if (found := _one(e)) is not None:
            return found
        orig = getattr(e, "orig", None)
        for nxt in (orig, e.__cause__, e.__context__):
            if isinstance(nxt, BaseException):
                todo.append(nxt)
    return None


class OutageLog:
    """Logs an outage once when it starts and once when it ends, and paces retries.

    Parameters
    ----------
    what
        Who meets it, to begin each line: "API", "scheduling loop".
    counted
        What ``failed`` counts, for the closing line: "requests answered 503".
    max_backoff
        Longest wait ``backoff`` gives, in seconds: the database is retried at least this
        often, so work carries on within seconds of it coming back.
    back
        What the closing line says came back (an outage of something other than the
        database: "starts go ahead again").
    """

    def __init__(
        self,
        what: str,
        counted: str,
        logger: logging.Logger,
        *,
        max_backoff: float = 5.0,
        back: str = "the database is back",
    ) -> None:
        self.what = what
        self.counted = counted
        self.log = logger
        self.max_backoff = max_backoff
        self.back = back
        #: The outage in progress, or None.
        self.current: Outage | None = None
        self.count = 0
        self._since = 0.0
        self._since_wall = datetime.now(UTC)

    def failed(self, outage: Outage) -> bool:
        """One more failure; True (and logged) when it starts an outage."""
        self.count += 1
        if self.current is not None:
            if outage.kind != self.current.kind:
                self.log.warning("%s: now %s", self.what, outage.detail)
                self.current = outage
            return False
        self.current = outage
        self.count = 1
        self._since = time.monotonic()
        self._since_wall = datetime.now(UTC)
        self.log.error(
            "%s: %s (since %s UTC); trying again every few seconds",
            self.what,
            outage.detail,
            self._since_wall.strftime("%H:%M:%S"),
        )
        return True

    def recovered(self) -> None:
        """The database answered again: log the end of the outage, if one was going on."""
        if self.current is None:
            return
        self.log.warning(
            "%s: %s after %.1f s; %s %s meanwhile",
            self.what,
            self.back,
            time.monotonic() - self._since,
            f"{self.count:,}",
            self.counted,
        )
        self.current = None
        self.count = 0

    def backoff(self, base: float = 0.25) -> float:
        """How long to wait before the next try: doubling from ``base`` seconds, at most
        ``max_backoff``."""
        n = max(self.count - 1, 0)
        return float(min(base * 2 ** min(n, 16), self.max_backoff))
