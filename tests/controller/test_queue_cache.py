"""The scheduling loop's copy of the pending queue: workloads that join it are read alone and
added; anything else that moves it (a cancel) has it read whole; either way the queue the
scheduler sees is the database's."""

from __future__ import annotations

from sqlalchemy.orm import Session

from allotment.controller.view import load_live, load_policy_view
from tests.controller.conftest import Fast


async def _pending_ids(fast: Fast) -> set[int]:
    loop = fast.controller.scheduling

    def read(session: Session) -> set[int]:
        view = load_policy_view(session, {})
        assert view is not None
        return {p.id for p in load_live(session, view, fast.clock.now(), loop._queue).pending}

    return await fast.controller.db.run_read(read)


async def test_joiners_are_added_and_a_cancel_reads_it_whole(fast: Fast) -> None:
    running = [await fast.submit() for _ in range(4)]  # the node's four CPUs
    for wid in running:
        await fast.until(wid, "running")
    queued = [await fast.submit() for _ in range(3)]
    cache = fast.controller.scheduling._queue
    assert await _pending_ids(fast) == set(queued)
    reads = cache.reads
    more = [await fast.submit() for _ in range(5)]
    assert await _pending_ids(fast) == set(queued + more)
    assert cache.reads == reads  # the five joiners were read alone
    await fast.cancel(more[2])
    assert await _pending_ids(fast) == set(queued + more) - {more[2]}
    assert cache.reads == reads + 1  # a cancel: read whole
