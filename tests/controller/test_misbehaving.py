"""Backends that misbehave, as JupyterHub's ``BadSpawner`` and dask-gateway's
``ClusterFailsDuringStart`` do: the controller records what happened, frees the capacity, and
goes on admitting others."""

from __future__ import annotations

import asyncio

import pytest

from allotment.backends.fake import FailsToStart, FakeBackend, NeverStops, SlowPoll, Vanishes
from allotment.controller.reconciler import MAX_START_FAILURES
from tests.controller.conftest import Fast


class TestFailsToStart:
    @pytest.fixture
    def backend(self) -> FakeBackend:
        return FailsToStart(error="no such launcher: /usr/libexec/allot-launch")

    async def test_it_fails_after_the_retries_with_the_reason(self, fast: Fast) -> None:
        wid = await fast.submit()
        w = await fast.until(wid, "failed")
        assert w["reason"] == "could not start: no such launcher: /usr/libexec/allot-launch"
        assert (w["target"], w["started_at"]) == ("stopped", None)
        assert isinstance(fast.backend, FailsToStart)
        assert fast.backend.failures == MAX_START_FAILURES
        assert await fast.backend.present() == set(), "the last attempt was released"


class TestNeverStops:
    @pytest.fixture
    def backend(self) -> FakeBackend:
        return NeverStops()

    async def test_a_stop_it_ignores_is_recorded_and_its_release_ends_it(self, fast: Fast) -> None:
        # The contract says ``stop`` returns when nothing is left; this one returns at once.
        # The controller records the stop (no exit status) and ``release`` is what ends it:
        # the local backend's release kills whatever is left in the workload's cgroups.
        wid = await fast.submit()
        await fast.until(wid, "running")
        await fast.cancel(wid)
        w = await fast.until(wid, "stopped")
        assert (w["exit_code"], w["reason"]) == (None, "cancelled by admin-token/setup")
        assert fast.backend.running() == [] and await fast.backend.present() == set()


class TestVanishes:
    @pytest.fixture
    def backend(self) -> FakeBackend:
        return Vanishes()

    async def test_a_workload_gone_without_a_status_fails_with_a_reason(self, fast: Fast) -> None:
        wid = await fast.submit()
        w = await fast.until(wid, "failed")
        assert (w["exit_code"], w["reason"]) == (None, "vanished without an exit status")
        assert await fast.backend.present() == set()


class TestSlowPoll:
    @pytest.fixture
    def backend(self) -> FakeBackend:
        return SlowPoll()

    async def test_a_slow_poll_does_not_hold_up_admissions(self, fast: Fast) -> None:
        backend = fast.backend
        assert isinstance(backend, SlowPoll)
        first = await fast.submit()
        await fast.until(first, "running")
        poll = asyncio.create_task(fast.poll_once())
        for _ in range(5000):
            if backend.waiting or poll.done():
                break
            await asyncio.sleep(0.001)
        assert backend.waiting == 1, poll
        second = await fast.submit()  # admitted and started while the poll hangs
        await fast.until(second, "running")
        assert not poll.done()
        backend.gate.set()
        await asyncio.wait_for(poll, 5)
        assert backend.running() == [first, second]


async def test_a_vanished_workload_among_others_fails_alone(fast: Fast) -> None:
    lost, kept = await fast.submit(), await fast.submit()
    for wid in (lost, kept):
        await fast.until(wid, "running")
    fast.backend.vanish(lost)
    await fast.until(lost, "failed")
    assert (await fast.get(kept))["status"] == "running"
