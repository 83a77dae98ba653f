"""What the backend reports it has is what the scheduler hands out: a node reported smaller is
scheduled smaller, a node not reported (a Slurm node drained or down) gets nothing, and a node
back in the report is used again, without a restart or a new policy."""

from __future__ import annotations

import asyncio

import pytest

from allotment.backends.base import NodeCapacity
from allotment.backends.fake import FakeBackend
from allotment.controller import scheduling
from allotment.domain.resources import Resources
from tests.controller.conftest import Fast

G = 2**30


@pytest.fixture
def backend(monkeypatch: pytest.MonkeyPatch) -> FakeBackend:
    monkeypatch.setattr(scheduling, "CAPACITY_SECONDS", 0.0)  # asked again every cycle
    # The policy declares ws1 with four CPUs; the backend has two of them.
    return FakeBackend(nodes=[NodeCapacity("ws1", Resources.of(2, 16 * G))])


async def test_the_scheduler_hands_out_what_the_backend_reports(fast: Fast) -> None:
    jobs = [await fast.submit() for _ in range(4)]
    for wid in jobs[:2]:
        await fast.until(wid, "running")
    for wid in jobs[2:]:
        held = await fast.eventually(wid, lambda w: w["position"] is not None)
        assert held["status"] == "pending", held
    assert fast.backend.running() == jobs[:2]

    # ws1 is drained: it leaves the report. An ending job frees nothing the queue may use.
    fast.backend.nodes = [NodeCapacity("ws2", Resources.of(4, 16 * G))]
    fast.backend.finish(jobs[0], 0)
    await fast.until(jobs[0], "stopped")
    await fast.controller.scheduling.cycle()
    await asyncio.sleep(0.05)
    assert [(await fast.get(w))["status"] for w in jobs[2:]] == ["pending", "pending"]
    assert fast.backend.running() == [jobs[1]]

    # Back, with all four CPUs: both waiting jobs start.
    fast.backend.nodes = [NodeCapacity("ws1", Resources.of(4, 16 * G))]
    fast.controller.scheduling.nudge()
    for wid in jobs[2:]:
        await fast.until(wid, "running")
    assert fast.backend.running() == jobs[1:]
