"""Estimated start times of held workloads.

The first ``exact`` held workloads of a pool are placed, in queue order, on a profile of each
node's free capacity over time (what runs ends at its expected end); each starts at the
earliest time it fits for its whole walltime. Beyond them, the work still ahead is divided by
the pool's capacity (a fluid estimate, O(1) each), so a queue of a million costs no more than a
pass over it.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from allotment.domain.resources import Resources
from allotment.scheduler.snapshot import Pending
from allotment.scheduler.usage import dominant_share

__all__ = ["project"]

INF = float("inf")


class _NodeLike(Protocol):
    free: Resources
    releases: list[tuple[float, Resources]]

    @property
    def spec(self) -> Any: ...


def _gpus_fit(need: Mapping[str, int], free: Mapping[str, int]) -> bool:
    return all(n <= free.get(m, 0) for m, n in need.items())


class _Profile:
    """Free capacity of one node as a step function of time, kept as parallel lists of plain
    numbers: the projection's inner loop compares integers, not objects."""

    def __init__(self, now: float, free: Resources, releases: list[tuple[float, Resources]]):
        self.times = [now]
        self.cpu = [free.millicpus]
        self.mem = [free.memory]
        self.gpus: list[dict[str, int]] = [dict(free.gpus)]
        for end, res in sorted(releases, key=lambda x: x[0]):
            t = max(end, now)
            if t != self.times[-1]:
                self.times.append(t)
                self.cpu.append(self.cpu[-1])
                self.mem.append(self.mem[-1])
                self.gpus.append(dict(self.gpus[-1]))
            self.cpu[-1] += res.millicpus
            self.mem[-1] += res.memory
            for m, n in res.gpus.items():
                self.gpus[-1][m] = self.gpus[-1].get(m, 0) + n

    def _split(self, t: float) -> int:
        """Index of the segment starting at ``t``, splitting one if needed."""
        i = bisect_left(self.times, t)
        if i < len(self.times) and self.times[i] == t:
            return i
        self.times.insert(i, t)
        self.cpu.insert(i, self.cpu[i - 1])
        self.mem.insert(i, self.mem[i - 1])
        self.gpus.insert(i, dict(self.gpus[i - 1]))
        return i

    def earliest(
        self, need: Resources, walltime: float, after: float, before: float = float("inf")
    ) -> float | None:
        """The earliest start, at or after ``after``, of a window of ``walltime`` in which
        ``need`` fits throughout: one pass, restarting the window after a segment too small."""
        times, cpu, mem, gpus = self.times, self.cpu, self.mem, self.gpus
        nc, nm, ng = need.millicpus, need.memory, need.gpus
        n = len(times)
        i = bisect_right(times, after) - 1 if after > times[0] else 0
        while i < n:
            t = times[i] if times[i] > after else after
            if t >= before:  # another node already offers an earlier start
                return None
            end = t + walltime
            j = i
            while j < n and times[j] < end:
                if cpu[j] < nc or mem[j] < nm or (ng and not _gpus_fit(ng, gpus[j])):
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
            self.cpu[k] -= need.millicpus
            self.mem[k] -= need.memory
            for m, c in need.gpus.items():
                self.gpus[k][m] = self.gpus[k].get(m, 0) - c


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
    shares: dict[tuple[int, int, tuple[tuple[str, int], ...]], float] = {}
    # Profiles only shrink as workloads are placed, so on each node a workload of the same size
    # and walltime as an earlier one cannot start before that one could: each (class, node)
    # remembers that bound, nodes are tried from the lowest bound, and a node whose bound is no
    # better than the best start found so far is not searched at all.
    bounds: dict[tuple[int, int, tuple[tuple[str, int], ...], float], list[float]] = {}
    for i, p in enumerate(held):
        if i < exact:
            r = p.resources
            cls = (r.millicpus, r.memory, tuple(r.gpus.items()), p.walltime)
            lb = bounds.get(cls)
            if lb is None:
                lb = bounds[cls] = [now if r.fits_in(n.spec.capacity) else INF for n, _ in profiles]
            after = last if in_order else now
            # The earliest start wins; among equal starts, the node listed first.
            best: tuple[float, _Profile] | None = None
            best_t, best_k = INF, len(profiles)
            for k in sorted(range(len(profiles)), key=lambda k: (lb[k], k)):
                if lb[k] > best_t or (lb[k] == best_t and k > best_k):
                    break
                before = best_t if k > best_k else math.nextafter(best_t, INF)
                prof = profiles[k][1]
                t = prof.earliest(r, p.walltime, max(after, lb[k]), before)
                lb[k] = best_t if t is None else t
                if t is not None:
                    best, best_t, best_k = (t, prof), t, k
            if best is None:
                etas.append(None)
                continue
            best[1].take(p.resources, best[0], p.walltime)
            etas.append(best[0])
            last = max(last, best[0])
        else:
            r = p.resources
            key = (r.millicpus, r.memory, tuple(r.gpus.items()))
            share = shares.get(key)
            if share is None:
                share = shares[key] = dominant_share(r, capacity)
            backlog += share * p.walltime
            etas.append(last + backlog)
    return etas
