"""Replay a trace through ``scheduler.schedule`` with a fake clock.

The machine is one pool of ``cores`` CPUs on one node (a SWF job may use any of a parallel
machine's processors). At every time something happens (a submission, an end) the scheduler
runs on a snapshot, with ``explain=False``: no Hold decisions, and the walk stops once the pool
is full. Jobs run for their logged runtime; backfill sees their requested time. Fair-share
usage is core-seconds over the pool's size, decayed with a half-life (Slurm's default, 7 days).
"""

from __future__ import annotations

import heapq
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from sortedcontainers import SortedKeyList

from allotment.domain.resources import Resources
from allotment.scheduler.cycle import schedule
from allotment.scheduler.decisions import Admit, Reject
from allotment.scheduler.fairshare import fair_share_factors
from allotment.scheduler.snapshot import (
    AccountState,
    NodeState,
    Pending,
    Policy,
    Running,
    Snapshot,
    Weights,
)
from allotment.scheduler.usage import decay_factor
from allotment.sim.swf import TraceJob

__all__ = ["Outcome", "Result", "Weights", "replay"]


@dataclass
class Outcome:
    job: TraceJob
    account: str
    start: float | None = None
    end: float | None = None
    rejected: str | None = None


@dataclass
class Result:
    outcomes: list[Outcome]
    cores: int
    wall_seconds: float
    cpu_seconds: float
    cycles: int
    shares: dict[str, float] = field(default_factory=dict)


def replay(
    jobs: Iterable[TraceJob],
    cores: int,
    policy: Policy = "fairshare",
    *,
    account_of: Callable[[TraceJob], str] = lambda j: f"g{j.group}",
    shares: Mapping[str, float] | None = None,
    half_life: float = 7 * 86_400.0,
    recalc: float = 300.0,
    weights: Weights | None = None,
) -> Result:
    """Replay ``jobs``; fair-share factors are recomputed every ``recalc`` seconds of trace
    time (Slurm's PriorityCalcPeriod, 5 minutes by default)."""
    jobs = sorted(jobs, key=lambda j: (j.submit, j.id))
    outcomes = {j.id: Outcome(j, account_of(j)) for j in jobs}
    paths = {o.account for o in outcomes.values()}
    for path in list(paths):
        parts = path.split("/")
        paths.update("/".join(parts[:i]) for i in range(1, len(parts)))
    share_of = dict(shares or {})
    accounts = {p: AccountState(p, shares=share_of.get(p, 1.0)) for p in paths}
    node = NodeState("trace", "machine", Resources.of(cores))
    pending: dict[int, Pending] = {}
    running: dict[int, Running] = {}
    ends: list[tuple[float, int]] = []
    usage: dict[tuple[str, str], float] = defaultdict(float)
    i, now, cycles = 0, jobs[0].submit if jobs else 0.0, 0
    users = {(o.account, str(o.job.user)) for o in outcomes.values()}
    factors: dict[tuple[str, str], float] = {}
    computed_at = -float("inf")
    weights = weights or Weights()

    def rank_key(p: Pending) -> float:
        # Priority without the part every job shares (w_age · now / max_age): it orders jobs
        # the same at any time, so the queue stays sorted between recalculations.
        fs = factors.get((p.account, p.user), 0.0)
        return -(weights.fairshare * fs + p.priority - weights.age * p.submitted / weights.max_age)

    def fifo_key(p: Pending) -> tuple[float, int]:
        return (p.submitted, p.id)

    def fair_key(p: Pending) -> tuple[float, float, int]:
        return (rank_key(p), p.submitted, p.id)

    # The queue, kept sorted as jobs arrive and leave: the cycle walks it from the front and
    # stops once the machine is full, so no cycle pays for the whole queue.
    queue: SortedKeyList = SortedKeyList(key=fair_key if policy == "fairshare" else fifo_key)
    busy = 0  # millicpus in use
    #: (account, user) → share of the machine their running jobs hold now.
    rates: dict[tuple[str, str], float] = defaultdict(float)
    wall = cpu = 0.0
    while i < len(jobs) or ends:
        t = min(
            jobs[i].submit if i < len(jobs) else float("inf"), ends[0][0] if ends else float("inf")
        )
        if policy == "fairshare" and t > now:
            factor = decay_factor(t - now, half_life)
            for key in usage:
                usage[key] *= factor
            ran = (t - now) * decay_factor((t - now) / 2, half_life)  # decayed to its middle
            for who, share in rates.items():  # what ran since the last event
                usage[who] += share * ran
        now = t
        freed = False
        while ends and ends[0][0] <= now:
            _, jid = heapq.heappop(ends)
            gone = running.pop(jid)
            busy -= gone.resources.millicpus
            rates[(gone.account, gone.user)] -= gone.resources.cpus / cores
            freed = True
        arrived = False
        while i < len(jobs) and jobs[i].submit <= now:
            j = jobs[i]
            o = outcomes[j.id]
            pending[j.id] = Pending(
                j.id, str(j.user), o.account, "trace", Resources.of(j.procs), j.submit, j.requested
            )
            queue.add(pending[j.id])
            i += 1
            arrived = True
        if not pending or not (freed or arrived):
            continue
        if busy >= cores * 1000:
            continue
        if policy == "fairshare" and now - computed_at >= recalc:
            factors = fair_share_factors({k: a.shares for k, a in accounts.items()}, usage, users)
            computed_at = now
            queue = SortedKeyList(pending.values(), key=fair_key)
        snap = Snapshot(
            weights=weights,
            now=now,
            accounts=accounts,
            nodes=[node],
            running=list(running.values()),
            pending=queue,
            policy=policy,
            explain=False,
            fair_share=factors,
            presorted=True,
        )
        w0, c0 = time.perf_counter(), time.process_time()
        decisions = schedule(snap)
        wall += time.perf_counter() - w0
        cpu += time.process_time() - c0
        cycles += 1
        for d in decisions:
            if isinstance(d, Admit):
                p = pending.pop(d.workload)
                queue.remove(p)
                o = outcomes[d.workload]
                o.start, o.end = now, now + o.job.runtime
                running[p.id] = Running(
                    p.id, p.user, p.account, "trace", "machine", p.resources, now, now + p.walltime
                )
                heapq.heappush(ends, (o.end, p.id))
                busy += p.resources.millicpus
                rates[(p.account, p.user)] += p.resources.cpus / cores
            elif isinstance(d, Reject):
                queue.remove(pending.pop(d.workload))
                outcomes[d.workload].rejected = d.reason
    total = sum(share_of.get(a, 1.0) for a in {o.account for o in outcomes.values()})
    target = {a: share_of.get(a, 1.0) / total for a in {o.account for o in outcomes.values()}}
    return Result(list(outcomes.values()), cores, wall, cpu, cycles, target)
