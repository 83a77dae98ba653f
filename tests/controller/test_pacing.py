"""The scheduling loop's pace: however often it is nudged, it rests after each cycle in
proportion to what the cycle cost, and the nudges that arrive meanwhile share one cycle."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from allotment.clock import FakeClock
from allotment.controller import scheduling
from allotment.controller.scheduling import CycleResult, SchedulingLoop
from allotment.db.engine import Database


class Slow(SchedulingLoop):
    """A loop whose every cycle takes ``cost`` seconds of the event loop, as a long queue's
    does (the real cycle is CPU work that holds the loop)."""

    def __init__(self, cost: float) -> None:
        super().__init__(Database("sqlite+aiosqlite:///:memory:"), FakeClock(), lambda _v: ())
        self.cost = cost
        self.cycles: list[float] = []

    async def _cycle(self) -> CycleResult | None:
        self.cycles.append(time.monotonic())
        time.sleep(self.cost)  # holds the event loop, as CPU work does
        return None


async def _nudged_for(loop: Slow, seconds: float) -> None:
    task = asyncio.create_task(loop.run())
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        loop.nudge()
        await asyncio.sleep(0.001)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_a_stream_of_nudges_leaves_the_loop_half_its_time() -> None:
    loop = Slow(cost=0.05)
    await _nudged_for(loop, 1.0)
    gaps = [b - a for a, b in zip(loop.cycles, loop.cycles[1:], strict=False)]
    assert len(loop.cycles) >= 2
    # Each cycle starts no sooner than its predecessor's cost, and as long again, after it.
    assert min(gaps) >= 2 * loop.cost * scheduling.PACE - 0.005, gaps


async def test_without_a_rest_the_same_nudges_would_cycle_back_to_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The rest is what spaces the cycles: with PACE 0 they follow each other at once.
    monkeypatch.setattr(scheduling, "PACE", 0.0)
    loop = Slow(cost=0.05)
    await _nudged_for(loop, 1.0)
    gaps = [b - a for a, b in zip(loop.cycles, loop.cycles[1:], strict=False)]
    assert min(gaps) < 2 * loop.cost - 0.005, gaps


async def test_a_cheap_cycle_rests_for_as_little() -> None:
    # A short queue's cycle takes milliseconds: a submission still starts at once.
    loop = Slow(cost=0.0)
    await _nudged_for(loop, 0.3)
    assert len(loop.cycles) > 10
