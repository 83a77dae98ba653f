"""Telling a database outage from a bug (``db/outage.py``), and saying so once."""

from __future__ import annotations

import errno
import logging
import sqlite3

import asyncpg.exceptions as pg
import pytest
from sqlalchemy import exc as sa

from allotment.db.outage import OutageLog, classify


def wrapped(orig: BaseException) -> sa.OperationalError:
    """As SQLAlchemy raises what the driver said."""
    return sa.OperationalError("INSERT INTO workloads …", {}, orig)


@pytest.mark.parametrize(
    ("error", "kind", "says"),
    [
        (
            ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed"),
            "unavailable",
            "refused",
        ),
        (wrapped(sqlite3.OperationalError("database or disk is full")), "disk_full", "full"),
        (wrapped(sqlite3.OperationalError("database is locked")), "busy", "lock"),
        (OSError(errno.ENOSPC, "No space left on device"), "disk_full", "full"),
        (wrapped(pg.ConnectionDoesNotExistError("closed in the middle")), "unavailable", "lost"),
        (wrapped(pg.AdminShutdownError("terminating connection")), "unavailable", "shutting"),
        (
            wrapped(pg.CannotConnectNowError("the database system is starting up")),
            "unavailable",
            "starting",
        ),
        (wrapped(pg.DiskFullError("could not extend file")), "disk_full", "full"),
        (sa.TimeoutError("QueuePool limit reached"), "unavailable", "came free"),
    ],
)
def test_an_outage_is_recognised_with_what_is_wrong(
    error: BaseException, kind: str, says: str
) -> None:
    outage = classify(error)
    assert outage is not None
    assert outage.kind == kind
    assert says in outage.detail
    assert outage.retry_after > 0


def test_an_outage_is_found_down_the_chain_of_causes() -> None:
    try:
        try:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "refused")
        except OSError as e:
            raise RuntimeError("could not load the policy") from e
    except RuntimeError as e:
        outage = classify(e)
    assert outage is not None and outage.kind == "unavailable"


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("a bug"),
        wrapped(sqlite3.OperationalError("no such table: workloads")),
        wrapped(pg.UniqueViolationError("duplicate key")),
        wrapped(pg.QueryCanceledError("canceling statement due to statement timeout")),
        OSError(errno.EACCES, "Permission denied"),
    ],
)
def test_other_errors_are_not_outages(error: BaseException) -> None:
    assert classify(error) is None


def test_the_text_never_carries_the_drivers_message() -> None:
    secret = "postgresql://allotment:hunter2@db.example.org/allotment"
    outage = classify(wrapped(pg.ConnectionDoesNotExistError(f"lost {secret}")))
    assert outage is not None and "hunter2" not in outage.detail


def test_an_outage_is_logged_once_when_it_starts_and_once_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = OutageLog("API", "requests answered 503", logging.getLogger("test.outage"))
    outage = classify(ConnectionRefusedError(errno.ECONNREFUSED, "refused"))
    assert outage is not None
    with caplog.at_level(logging.INFO, "test.outage"):
        assert log.failed(outage) is True
        for _ in range(1233):
            assert log.failed(outage) is False
        log.recovered()
        log.recovered()  # nothing more to say
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "the database is unavailable: connection refused (since " in lines[0]
    assert "the database is back after" in lines[1]
    assert "1,234 requests answered 503 meanwhile" in lines[1]


def test_the_backoff_doubles_to_a_cap() -> None:
    log = OutageLog("loop", "tries", logging.getLogger("test.outage"), max_backoff=5.0)
    outage = classify(OSError(errno.ENOSPC, "full"))
    assert outage is not None
    waits = []
    for _ in range(8):
        log.failed(outage)
        waits.append(log.backoff())
    assert waits == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
