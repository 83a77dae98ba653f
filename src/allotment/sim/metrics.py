"""What a replay delivered: utilisation, waits, bounded slowdown, shares against targets."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass

from allotment.sim.replay import Result

__all__ = ["Metrics", "measure"]

TAU = 10.0  # seconds: bounded slowdown ignores how much short jobs are slowed below this


@dataclass(frozen=True)
class Metrics:
    jobs: int
    rejected: int
    utilisation: float
    wait_mean: float
    wait_median: float
    wait_max: float
    bounded_slowdown_mean: float
    #: account → (delivered share of core-seconds, target share), between first and last
    #: submission.
    shares: dict[str, tuple[float, float]]
    scheduler_wall_s: float
    scheduler_cpu_s: float
    cycles: int


def measure(result: Result) -> Metrics:
    done = [o for o in result.outcomes if o.start is not None and o.end is not None]
    if not done:
        raise ValueError("no job ran")
    first = min(o.job.submit for o in result.outcomes)
    last_submit = max(o.job.submit for o in result.outcomes)
    last_end = max(o.end for o in done if o.end is not None)
    work = sum(o.job.procs * o.job.runtime for o in done)
    waits = [o.start - o.job.submit for o in done if o.start is not None]
    slow = [
        max(1.0, (w + o.job.runtime) / max(o.job.runtime, TAU))
        for o, w in zip(done, waits, strict=True)
    ]
    delivered: dict[str, float] = defaultdict(float)
    for o in done:
        assert o.start is not None and o.end is not None
        lo, hi = max(o.start, first), min(o.end, last_submit)
        if hi > lo:
            delivered[o.account] += o.job.procs * (hi - lo)
    total = sum(delivered.values()) or 1.0
    return Metrics(
        jobs=len(done),
        rejected=sum(1 for o in result.outcomes if o.rejected),
        utilisation=work / (result.cores * (last_end - first)) if last_end > first else 0.0,
        wait_mean=statistics.fmean(waits),
        wait_median=statistics.median(waits),
        wait_max=max(waits),
        bounded_slowdown_mean=statistics.fmean(slow),
        shares={a: (delivered.get(a, 0.0) / total, t) for a, t in sorted(result.shares.items())},
        scheduler_wall_s=result.wall_seconds,
        scheduler_cpu_s=result.cpu_seconds,
        cycles=result.cycles,
    )
