"""Trace replay's queue: the pending jobs in the live scheduler's order, kept sorted as jobs
arrive and leave, so that no cycle pays for sorting the whole queue.

The order is ``scheduler.ordering.priority``'s, the same function the live scheduler sorts by.
A job's priority grows with the time it has waited until ``max_age``, then stops growing, so the
queue is two sorted lists. Among jobs younger than ``max_age`` the order does not change with
time (every one of them gains the same age per second), so they are sorted by their priority at
submission less the age every job shares (``age · submitted / max_age``). Among older jobs the
age part is the same (capped) for all, so they are sorted by their priority at any later time. A
young job moves to the old list when it reaches ``max_age``; a walk merges the two lists by
priority now. Fair-share factors change only when they are recomputed; ``reorder`` then sorts
both lists again.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import overload

from sortedcontainers import SortedKeyList

from allotment.scheduler.ordering import age_factor, priority
from allotment.scheduler.snapshot import Pending, Policy, Weights

__all__ = ["ReplayQueue"]

_Key = tuple[float, float, int]


class ReplayQueue:
    """The pending jobs of a replay; ``walk(now)`` yields them in scheduling order."""

    def __init__(self, policy: Policy, weights: Weights) -> None:
        self._fair = policy == "fairshare"
        self._weights = weights
        self._ages = self._fair and weights.max_age > 0
        self._factors: Mapping[tuple[str, str], float] = {}
        self._young: SortedKeyList = SortedKeyList(key=self._young_key())
        self._old: SortedKeyList = SortedKeyList(key=self._old_key())
        #: Ids of the jobs in the old list.
        self._old_ids: set[int] = set()
        #: Ids of every job queued, young or old.
        self._queued: set[int] = set()
        #: Young jobs by submission time, the next to reach ``max_age`` first; a job that left
        #: stays until it reaches the front.
        self._by_age: list[tuple[float, int, Pending]] = []

    def __len__(self) -> int:
        return len(self._queued)

    def _young_key(self) -> Callable[[Pending], _Key]:
        if not self._fair:
            return _fifo_key
        factors = self._factors
        w_fs, w_age, max_age = self._weights.fairshare, self._weights.age, self._weights.max_age

        def key(p: Pending) -> _Key:
            # priority(p, fs, weights, p.submitted), whose age part is 0 at submission, written
            # out: this runs for every queued job at every recalculation. test_ordering checks
            # that it is the same number.
            fs = factors.get((p.account, p.user), 0.0)
            shared = w_age * p.submitted / max_age if max_age > 0 else 0.0
            return (-(w_fs * fs + p.priority - shared), p.submitted, p.id)

        return key

    def _old_key(self) -> Callable[[Pending], _Key]:
        return self._key_at(math.inf)

    def _key_at(self, now: float) -> Callable[[Pending], _Key]:
        factors, w = self._factors, self._weights

        def key(p: Pending) -> _Key:
            fs = factors.get((p.account, p.user), 0.0)
            return (-priority(p, fs, w, now), p.submitted, p.id)

        return key

    def add(self, p: Pending) -> None:
        self._young.add(p)
        self._queued.add(p.id)
        if self._ages:
            heapq.heappush(self._by_age, (p.submitted, p.id, p))

    def remove(self, p: Pending) -> None:
        self._queued.remove(p.id)
        if p.id in self._old_ids:
            self._old_ids.remove(p.id)
            self._old.remove(p)
        else:
            self._young.remove(p)

    def reorder(self, factors: Mapping[tuple[str, str], float]) -> None:
        """Sort again under new fair-share factors."""
        self._factors = factors
        self._young = SortedKeyList(self._young, key=self._young_key())
        self._old = SortedKeyList(self._old, key=self._old_key())

    def walk(self, now: float) -> Sequence[Pending]:
        """The queue at ``now`` in the order the scheduler considers it, read lazily: a cycle
        that stops once the machine is full reads only the front."""
        by_age, max_age = self._by_age, self._weights.max_age
        while by_age and age_factor(now - by_age[0][0], max_age) >= 1.0:
            _, i, p = heapq.heappop(by_age)
            if i in self._queued:
                self._young.remove(p)
                self._old.add(p)
                self._old_ids.add(i)
        return _Walk(self, now)

    def _iter_at(self, now: float) -> Iterator[Pending]:
        if not self._old:
            return iter(self._young)
        if not self._young:
            return iter(self._old)
        return heapq.merge(self._young, self._old, key=self._key_at(now))


def _fifo_key(p: Pending) -> _Key:
    return (0.0, p.submitted, p.id)


class _Walk(Sequence[Pending]):
    """The queue in order at one time; iterated lazily, indexed by reading it all."""

    def __init__(self, queue: ReplayQueue, now: float) -> None:
        self._queue, self._now = queue, now

    def __iter__(self) -> Iterator[Pending]:
        return self._queue._iter_at(self._now)

    def __len__(self) -> int:
        return len(self._queue)

    @overload
    def __getitem__(self, i: int) -> Pending: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[Pending]: ...
    def __getitem__(self, i: int | slice) -> Pending | Sequence[Pending]:
        return list(self)[i]
