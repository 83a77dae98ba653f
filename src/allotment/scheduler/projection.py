"""Estimated start times of held workloads.

The first ``exact`` held workloads of a pool are placed, in queue order, on a profile of each
node's free capacity over time (what runs ends at its expected end); each starts at the
earliest time it fits for its whole walltime. Beyond them, the work still ahead is divided by
the pool's capacity (a fluid estimate, O(1) each), so a queue of a million costs no more than a
pass over it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from allotment.domain.resources import Resources
from allotment.scheduler.snapshot import Pending
from allotment.scheduler.usage import dominant_share, subtract

__all__ = ["project"]


class _NodeLike(Protocol):
    free: Resources
    releases: list[tuple[float, Resources]]

    @property
    def spec(self) -> Any: ...


class _Profile:
    """Free capacity of one node as a step function of time."""

    def __init__(self, now: float, free: Resources, releases: list[tuple[float, Resources]]):
        self.times = [now]
        self.free = [free]
        for end, res in sorted(releases, key=lambda x: x[0]):
            t = max(end, now)
            if t == self.times[-1]:
                self.free[-1] = self.free[-1] + res
            else:
                self.times.append(t)
                self.free.append(self.free[-1] + res)

    def _split(self, t: float) -> int:
        """Index of the segment starting at ``t``, splitting one if needed."""
        for i, start in enumerate(self.times):
            if start == t:
                return i
            if start > t:
                self.times.insert(i, t)
                self.free.insert(i, self.free[i - 1])
                return i
        self.times.append(t)
        self.free.append(self.free[-1])
        return len(self.times) - 1

    def earliest(
        self, need: Resources, walltime: float, after: float, before: float = float("inf")
    ) -> float | None:
        """The earliest start, at or after ``after``, of a window of ``walltime`` in which
        ``need`` fits throughout: one pass, restarting the window after a segment too small."""
        times, free = self.times, self.free
        n = len(times)
        i = 0
        while i < n:
            t = max(times[i], after)
            if t >= before:  # another node already offers an earlier start
                return None
            if i + 1 < n and times[i + 1] <= t:
                i += 1
                continue
            end = t + walltime
            j = i
            while j < n and times[j] < end:
                if not need.fits_in(free[j]):
                    break
                j += 1
            else:
                return t
            i = j + 1  # no window can start before the segment that did not fit ends
        return None

    def take(self, need: Resources, start: float, walltime: float) -> None:
        i = self._split(start)
        j = self._split(start + walltime) if walltime != float("inf") else len(self.times)
        for k in range(i, j):
            self.free[k] = subtract(self.free[k], need)


def project(
    held: Sequence[Pending],
    nodes: Sequence[_NodeLike],
    now: float,
    exact: int,
    *,
    in_order: bool = False,
) -> list[float | None]:
    """Estimated start of each held workload, in their order; ``in_order`` (fifo) forbids a
    workload to start before the one ahead of it."""
    profiles = [(n, _Profile(now, n.free, n.releases)) for n in nodes]
    etas: list[float | None] = []
    last = now
    capacity = Resources()
    for n in nodes:
        capacity = capacity + n.spec.capacity
    backlog = 0.0
    for i, p in enumerate(held):
        if i < exact:
            best: tuple[float, _Profile] | None = None
            for n, prof in profiles:
                if not p.resources.fits_in(n.spec.capacity):
                    continue
                t = prof.earliest(
                    p.resources,
                    p.walltime,
                    last if in_order else now,
                    best[0] if best is not None else float("inf"),
                )
                if t is not None and (best is None or t < best[0]):
                    best = (t, prof)
            if best is None:
                etas.append(None)
                continue
            best[1].take(p.resources, best[0], p.walltime)
            etas.append(best[0])
            last = max(last, best[0])
        else:
            backlog += dominant_share(p.resources, capacity) * p.walltime
            etas.append(last + backlog)
    return etas
