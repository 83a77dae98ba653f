"""The controller's work queue: one entry per key, never processed twice at once, failures
retried after a delay that doubles."""

from __future__ import annotations

import asyncio

from allotment.controller.workqueue import WorkQueue


async def test_a_key_added_many_times_is_queued_once() -> None:
    q: WorkQueue[int] = WorkQueue()
    for k in (1, 2, 1, 1, 3, 2):
        q.add(k)
    assert len(q) == 3
    assert [await q.get() for _ in range(3)] == [1, 2, 3]


async def test_a_key_added_while_active_comes_back_once_after_done() -> None:
    q: WorkQueue[int] = WorkQueue()
    q.add(7)
    assert await q.get() == 7
    q.add(7)
    q.add(7)
    assert len(q) == 0, "never handed out twice at the same time"
    q.done(7)
    assert len(q) == 1
    assert await q.get() == 7


async def test_failures_back_off_exponentially_and_success_resets() -> None:
    q: WorkQueue[str] = WorkQueue(base_delay=0.01, max_delay=0.04)
    q.add("w")
    delays = []
    for _ in range(4):
        key = await asyncio.wait_for(q.get(), 1)
        delays.append(q.retry(key))
    assert delays == [0.01, 0.02, 0.04, 0.04]
    key = await asyncio.wait_for(q.get(), 1)
    q.done(key)
    assert q.failures("w") == 0


async def test_close_wakes_waiting_workers() -> None:
    q: WorkQueue[int] = WorkQueue()
    waiter = asyncio.create_task(q.get())
    await asyncio.sleep(0.01)
    await q.close()
    done, _ = await asyncio.wait({waiter}, timeout=1)
    assert done, "a worker blocked in get() must not hang after close"
