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
from collections.abc import Iterator, Mapping, Sequence
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
        self._factors: Mapping[tuple[str, str], float] = {}
        self._young: SortedKeyList = SortedKeyList(key=self._young_key)
        self._old: SortedKeyList = SortedKeyList(key=self._old_key)
        #: Young jobs by submission time: the next to reach ``max_age`` come first.
        self._by_age: SortedKeyList = SortedKeyList(key=_fifo_key)

    def __len__(self) -> int:
        return len(self._young) + len(self._old)

    def _fair_share(self, p: Pending) -> float:
        return self._factors.get((p.account, p.user), 0.0)

    def _young_key(self, p: Pending) -> _Key:
        if not self._fair:
            return _fifo_key(p)
        w = self._weights
        shared = w.age * p.submitted / w.max_age if w.max_age > 0 else 0.0
        return (-(priority(p, self._fair_share(p), w, p.submitted) - shared), p.submitted, p.id)

    def _old_key(self, p: Pending) -> _Key:
        return self._key_at(p, math.inf)

    def _key_at(self, p: Pending, now: float) -> _Key:
        return (-priority(p, self._fair_share(p), self._weights, now), p.submitted, p.id)

    def add(self, p: Pending) -> None:
        self._young.add(p)
        if self._fair and self._weights.max_age > 0:
            self._by_age.add(p)

    def remove(self, p: Pending) -> None:
        if p in self._old:
            self._old.remove(p)
        else:
            self._young.remove(p)
            self._by_age.discard(p)

    def reorder(self, factors: Mapping[tuple[str, str], float]) -> None:
        """Sort again under new fair-share factors."""
        self._factors = factors
        self._young = SortedKeyList(self._young, key=self._young_key)
        self._old = SortedKeyList(self._old, key=self._old_key)

    def walk(self, now: float) -> Sequence[Pending]:
        """The queue at ``now`` in the order the scheduler considers it, read lazily: a cycle
        that stops once the machine is full reads only the front."""
        max_age = self._weights.max_age
        while self._by_age and age_factor(now - self._by_age[0].submitted, max_age) >= 1.0:
            p = self._by_age.pop(0)
            self._young.remove(p)
            self._old.add(p)
        return _Walk(self, now)

    def _iter_at(self, now: float) -> Iterator[Pending]:
        if not self._old:
            return iter(self._young)
        if not self._young:
            return iter(self._old)
        return heapq.merge(self._young, self._old, key=lambda p: self._key_at(p, now))


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
