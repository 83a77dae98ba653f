"""The cap on a user's pending workloads (``limits.pending_per_user``), held under concurrency.

Counting on every submission would cost a read each, so a user's count is kept for the cache's
lifetime and raised by each reservation. What makes it hold when many submissions of one user
arrive at once: they check and reserve one at a time (a lock per user), and a recount adds
what this process reserved but has not committed yet (without it, every concurrent request
read the same committed count and passed: 100 concurrent submissions against a cap of 5 were
all accepted). A failed or replayed insert gives its reservation back.

Across several worker processes (``allot serve --workers N``) each process holds the cap for
what it admits itself: together they may exceed it by what the others reserved since a
process last counted.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from allotment.api.cache import TtlCache
from allotment.errors import Conflict

__all__ = ["PendingCounts", "Reservation"]


@dataclass
class Reservation:
    """Workloads reserved under the cap; ``give_back`` when none were created."""

    counts: PendingCounts
    user_id: int
    adding: int

    def give_back(self) -> None:
        """Return the reservation to the count (once: a second call returns nothing)."""
        known = self.counts.known.get(self.user_id)
        if known is not None:
            known[0] -= self.adding
        self.adding = 0


class PendingCounts:
    def __init__(self, ttl: float) -> None:
        #: User id → [workloads pending, at most]: counted, plus what was reserved since.
        self.known: TtlCache[int, list[int]] = TtlCache(ttl)
        self._locks: weakref.WeakValueDictionary[int, asyncio.Lock] = weakref.WeakValueDictionary()
        #: Reserved by this process and not yet committed (or given back), per user.
        self._in_flight: Counter[int] = Counter()

    @asynccontextmanager
    async def reserve(
        self, user_id: int, adding: int, cap: int, count: Callable[[], Awaitable[int]]
    ) -> AsyncIterator[Reservation]:
        """Reserve ``adding`` workloads of ``user_id`` under ``cap`` for the block, which
        inserts them; ``count`` reads how many the database holds pending (at most ``cap``).
        Raises Conflict, saying the numbers, when they do not fit."""
        lock = self._locks.get(user_id)
        if lock is None:
            lock = self._locks[user_id] = asyncio.Lock()
        async with lock:
            known = self.known.get(user_id)
            if known is None or known[0] + adding > cap:
                # What is in flight first: one that commits while the database is read is
                # then counted twice (safe), never not at all.
                flying = self._in_flight[user_id]
                pending = await count() + flying
                if pending + adding > cap:
                    what = (
                        f"this array adds {adding:,}"
                        if adding > 1
                        else "this one would be one more"
                    )
                    raise Conflict(
                        f"You have {pending:,} workloads waiting to start and {what}; a user may "
                        f"have at most {cap:,} waiting (limits.pending_per_user). Wait for some to "
                        "start, or cancel some."
                    )
                known = [pending]
                self.known.put(user_id, known)
            known[0] += adding
            self._in_flight[user_id] += adding
        reservation = Reservation(self, user_id, adding)
        try:
            yield reservation
        except BaseException:
            reservation.give_back()
            raise
        finally:
            self._in_flight[user_id] -= adding
            if self._in_flight[user_id] <= 0:
                del self._in_flight[user_id]
