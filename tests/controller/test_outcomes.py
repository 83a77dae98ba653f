"""How ends are told, fast: a stop that had to be forced says so after who asked, and a
backend that cannot start anything for now (its disk is full) delays starts without failing
them."""

from __future__ import annotations

import logging

import pytest

from allotment.backends.fake import FakeBackend, NoRoom
from allotment.controller.reconciler import MAX_START_FAILURES
from tests.controller.conftest import Fast


async def test_a_forced_stop_is_told_after_who_asked(fast: Fast) -> None:
    wid = await fast.submit("stubborn")
    await fast.until(wid, "running")
    await fast.cancel(wid)
    w = await fast.until(wid, "stopped")
    assert w["reason"] == (
        "cancelled by admin-token/setup; it did not stop on SIGTERM and was killed after the "
        "1 s grace period"
    )


class TestNoRoom:
    @pytest.fixture
    def backend(self) -> FakeBackend:
        return NoRoom()

    async def test_starts_wait_for_room_and_are_never_failed_for_it(self, fast: Fast) -> None:
        assert isinstance(fast.backend, NoRoom)
        backend = fast.backend
        wid = await fast.submit("true")
        await fast.eventually(wid, lambda w: backend.refusals > MAX_START_FAILURES)
        assert (await fast.get(wid))["status"] == "admitted"
        backend.room = True
        w = await fast.until(wid, "stopped", seconds=30)
        assert (w["exit_code"], w["reason"]) == (0, "completed (exit status 0)")

    async def test_it_is_logged_once_as_the_backend_s_never_as_the_database_s(
        self, fast: Fast, caplog: pytest.LogCaptureFixture
    ) -> None:
        # The local backend's full data directory says ENOSPC in its cause, which read as
        # "the disk holding the database is full"; one without a cause was logged per try.
        assert isinstance(fast.backend, NoRoom)
        backend = fast.backend
        with caplog.at_level(logging.INFO, "allotment.controller"):
            wid = await fast.submit("true")
            await fast.eventually(wid, lambda w: backend.refusals > MAX_START_FAILURES)
            backend.room = True
            await fast.until(wid, "stopped", seconds=30)
        said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(said) == 2, said
        assert said[0].startswith("reconciler: the fake's disk is full (since ")
        assert said[1].startswith("reconciler: workloads can start again after ")
        assert f"{backend.refusals} starts put off meanwhile" in said[1]
        assert not any("database" in line for line in said)
