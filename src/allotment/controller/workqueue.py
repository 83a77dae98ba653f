"""A deduplicating work queue with per-key exponential backoff, after client-go's workqueue.

A key (a workload id) is in the queue at most once, however often it is added; a key being
processed that is added again is processed once more afterwards, never twice at the same time.
A failed key comes back after a delay that doubles with each consecutive failure.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["WorkQueue"]

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    def __init__(self, *, base_delay: float = 0.05, max_delay: float = 60.0) -> None:
        self._order: deque[K] = deque()
        self._queued: set[K] = set()
        self._active: set[K] = set()
        #: Added while active: queued again when done.
        self._again: set[K] = set()
        self._failures: dict[K, int] = {}
        self._timers: dict[K, asyncio.TimerHandle] = {}
        self._ready = asyncio.Condition()
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._closed = False

    def __len__(self) -> int:
        return len(self._order)

    def add(self, key: K) -> None:
        if self._closed:
            return
        if key in self._active:
            self._again.add(key)
            return
        if key in self._queued:
            return
        self._queued.add(key)
        self._order.append(key)
        asyncio.get_running_loop().create_task(self._notify())

    def add_after(self, key: K, delay: float) -> None:
        if self._closed or key in self._timers:
            return
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._timers.pop(key, None)
            self.add(key)

        self._timers[key] = loop.call_later(delay, fire)

    async def _notify(self) -> None:
        async with self._ready:
            self._ready.notify()

    async def get(self) -> K:
        """The next key; it is *active* until ``done`` or ``retry``."""
        async with self._ready:
            await self._ready.wait_for(lambda: bool(self._order) or self._closed)
            if not self._order:
                raise asyncio.CancelledError("queue closed")
            key = self._order.popleft()
            self._queued.discard(key)
            self._active.add(key)
            return key

    def done(self, key: K) -> None:
        """Processed successfully: forget its failures."""
        self._failures.pop(key, None)
        self._finish(key)

    def retry(self, key: K) -> float:
        """Processing failed: try again after a growing delay, which is returned."""
        n = self._failures.get(key, 0)
        self._failures[key] = n + 1
        delay = float(min(self.base_delay * 2**n, self.max_delay))
        self._finish(key)
        self.add_after(key, delay)
        return delay

    def _finish(self, key: K) -> None:
        self._active.discard(key)
        if key in self._again:
            self._again.discard(key)
            self.add(key)

    def failures(self, key: K) -> int:
        return self._failures.get(key, 0)

    async def close(self) -> None:
        self._closed = True
        for t in self._timers.values():
            t.cancel()
        self._timers.clear()
        async with self._ready:
            self._ready.notify_all()
