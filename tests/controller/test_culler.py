"""The culler and runtime stops, driven one poll at a time on a fake clock: a session nobody
uses is stopped after ``sessions.cull_idle`` (1h here); CPU use or reported activity keeps it;
jobs are never culled; a workload past its maximum runtime is stopped."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import update

from allotment.backends.fake import FakeBackend
from allotment.db.tables import Workload
from tests.controller.conftest import Fast

HOUR = 3600


async def running(fast: Fast, wid: int) -> None:
    await fast.until(wid, "running")
    await fast.poll_once()  # the first sample of a session's CPU counts as use


async def test_an_unused_session_is_stopped_with_the_reason(fast: Fast) -> None:
    wid = await fast.session()
    await running(fast, wid)
    fast.clock.advance(HOUR - 1)
    await fast.poll_once()
    assert (await fast.get(wid))["status"] == "running", "stopped before its hour"
    fast.clock.advance(2)
    await fast.poll_once()
    w = await fast.until(wid, "stopped")
    since = fast.clock.now() - timedelta(seconds=HOUR + 1)
    assert w["reason"] == (
        f"stopped after 1h unused (no browser, kernel or CPU activity since {since:%H:%M} UTC)"
    )
    assert fast.backend.running() == []


async def test_cpu_use_keeps_a_session(fast: Fast) -> None:
    wid = await fast.session()
    await running(fast, wid)
    for _ in range(3):
        fast.clock.advance(HOUR / 2)
        fast.backend.use_cpu(wid, 60.0)  # a computation with the browser closed
        await fast.poll_once()
    assert (await fast.get(wid))["status"] == "running"
    fast.clock.advance(HOUR + 1)  # then nothing for an hour
    await fast.poll_once()
    await fast.until(wid, "stopped")


async def test_reported_activity_keeps_a_session(fast: Fast) -> None:
    wid = await fast.session()
    await running(fast, wid)
    fast.clock.advance(HOUR - 10)
    async with fast.controller.db.write() as s:  # as POST workloads/{id}/activity writes it
        await s.execute(
            update(Workload).where(Workload.id == wid).values(last_activity=fast.clock.now())
        )
    fast.clock.advance(20)
    await fast.poll_once()
    assert (await fast.get(wid))["status"] == "running"


async def test_jobs_are_never_culled(fast: Fast) -> None:
    wid = await fast.submit()
    await running(fast, wid)
    fast.clock.advance(5 * HOUR)  # unused, but within its maximum runtime (8h by default)
    await fast.poll_once()
    assert (await fast.get(wid))["status"] == "running"


async def test_a_workload_past_its_maximum_runtime_is_stopped(fast: Fast) -> None:
    wid = await fast.submit(max_runtime="1h")
    other = await fast.submit()
    await running(fast, wid)
    await fast.until(other, "running")
    fast.clock.advance(HOUR)
    await fast.poll_once()
    assert (await fast.get(wid))["status"] == "running", "stopped at, not after, its limit"
    fast.clock.advance(1)
    await fast.poll_once()
    w = await fast.until(wid, "stopped")
    assert w["reason"] == "reached its maximum runtime (1h)"
    assert fast.backend.running() == [other]


class TestABackendThatCannotWatch:
    @pytest.fixture
    def backend(self) -> FakeBackend:
        return FakeBackend(watches=False)

    async def test_an_end_is_found_by_the_poll(self, fast: Fast) -> None:
        wid = await fast.submit()
        await fast.until(wid, "running")
        fast.backend.finish(wid, 0)
        await asyncio.sleep(0.05)
        assert (await fast.get(wid))["status"] == "running", "nothing could have seen it"
        await fast.poll_once()
        assert (await fast.until(wid, "stopped"))["exit_code"] == 0
