"""Replay jobs through ``scheduler.schedule`` with a fake clock.

At every time something happens (a submission, an end) the scheduler runs on a snapshot with
``explain=False``: no Hold decisions, and the walk stops once a pool is full. Jobs run for their
recorded runtime; backfill sees their requested time. Fair-share usage is each job's dominant
share of its pool times the time it ran, decayed with a half-life, and the factors are
recomputed every ``recalc`` seconds of trace time (Slurm's PriorityCalcPeriod, 5 minutes).

``replay`` reads a SWF trace onto one machine of ``cores`` CPUs; ``replay_jobs`` takes any
pools, accounts and limits (the what-if of a policy over recorded history).
"""

from __future__ import annotations

import heapq
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from allotment.domain.resources import Resources
from allotment.scheduler.cycle import schedule
from allotment.scheduler.decisions import Admit, Reject
from allotment.scheduler.fairshare import fair_share_factors
from allotment.scheduler.snapshot import (
    AccountState,
    Limits,
    NodeState,
    Pending,
    Policy,
    Running,
    Snapshot,
    Weights,
)
from allotment.scheduler.usage import decay_factor, dominant_share
from allotment.sim.queue import ReplayQueue
from allotment.sim.swf import TraceJob

__all__ = ["Outcome", "Result", "SimJob", "Weights", "replay", "replay_jobs"]


@dataclass(frozen=True, slots=True)
class SimJob:
    id: int
    submit: float
    runtime: float
    #: Requested time: what backfill plans with.
    requested: float
    resources: Resources
    user: str
    account: str
    pool: str
    #: The SWF group, for the schedule's CSV; -1 when not from a trace.
    group: int = -1

    @property
    def procs(self) -> float:
        return self.resources.cpus


@dataclass
class Outcome:
    job: SimJob
    start: float | None = None
    end: float | None = None
    rejected: str | None = None

    @property
    def account(self) -> str:
        return self.job.account


@dataclass
class Result:
    outcomes: list[Outcome]
    #: CPUs of all pools together.
    cores: float
    wall_seconds: float
    cpu_seconds: float
    cycles: int
    #: Target share of each account that submitted, from shares among those accounts.
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
    """Replay a SWF trace on one machine of ``cores`` CPUs."""
    sim = [
        SimJob(
            j.id,
            j.submit,
            j.runtime,
            j.requested,
            Resources.of(j.procs),
            str(j.user),
            account_of(j),
            "trace",
            j.group,
        )
        for j in jobs
    ]
    paths = {j.account for j in sim}
    for path in list(paths):
        parts = path.split("/")
        paths.update("/".join(parts[:i]) for i in range(1, len(parts)))
    share_of = dict(shares or {})
    accounts = {p: AccountState(p, shares=share_of.get(p, 1.0)) for p in paths}
    node = NodeState("trace", "machine", Resources.of(cores))
    return replay_jobs(
        sim, [node], accounts, policy, half_life=half_life, recalc=recalc, weights=weights
    )


def replay_jobs(
    jobs: Sequence[SimJob],
    nodes: Sequence[NodeState],
    accounts: Mapping[str, AccountState],
    policy: Policy = "fairshare",
    *,
    user_limits: Mapping[str, Limits] | None = None,
    default_limits: Limits | None = None,
    half_life: float = 7 * 86_400.0,
    recalc: float = 300.0,
    weights: Weights | None = None,
) -> Result:
    jobs = sorted(jobs, key=lambda j: (j.submit, j.id))
    outcomes = {j.id: Outcome(j) for j in jobs}
    capacity: dict[str, Resources] = defaultdict(Resources)
    for n in nodes:
        capacity[n.pool] = capacity[n.pool] + n.capacity
    total_mc = sum(c.millicpus for c in capacity.values())
    weights = weights or Weights()
    pending: dict[int, Pending] = {}
    running: dict[int, Running] = {}
    ends: list[tuple[float, int]] = []
    usage: dict[tuple[str, str], float] = defaultdict(float)
    #: (account, user) → dominant share of its pool their running jobs hold now.
    rates: dict[tuple[str, str], float] = defaultdict(float)
    users = {(j.account, j.user) for j in jobs}
    factors: dict[tuple[str, str], float] = {}
    computed_at = -float("inf")

    def share(p: Pending | Running) -> float:
        return dominant_share(p.resources, capacity[p.pool])

    # The queue, kept in the live scheduler's order as jobs arrive and leave: the cycle walks
    # it from the front and stops once the machine is full, so no cycle pays for the whole queue.
    queue = ReplayQueue(policy, weights)
    i, now, cycles = 0, jobs[0].submit if jobs else 0.0, 0
    busy = 0  # millicpus in use, all pools
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
            for who, rate in rates.items():
                usage[who] += rate * ran
        now = t
        changed = False
        while ends and ends[0][0] <= now:
            _, jid = heapq.heappop(ends)
            gone = running.pop(jid)
            busy -= gone.resources.millicpus
            rates[(gone.account, gone.user)] -= share(gone)
            changed = True
        while i < len(jobs) and jobs[i].submit <= now:
            j = jobs[i]
            p = Pending(j.id, j.user, j.account, j.pool, j.resources, j.submit, j.requested)
            pending[j.id] = p
            queue.add(p)
            i += 1
            changed = True
        if not pending or not changed or busy >= total_mc:
            continue
        if policy == "fairshare" and now - computed_at >= recalc:
            factors = fair_share_factors({k: a.shares for k, a in accounts.items()}, usage, users)
            computed_at = now
            queue.reorder(factors)
        snap = Snapshot(
            now=now,
            accounts=accounts,
            nodes=nodes,
            running=list(running.values()),
            pending=queue.walk(now),
            user_limits=user_limits or {},
            default_limits=default_limits or Limits(),
            weights=weights,
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
                r = Running(
                    p.id, p.user, p.account, p.pool, d.node, p.resources, now, now + p.walltime
                )
                running[p.id] = r
                heapq.heappush(ends, (o.end, p.id))
                busy += p.resources.millicpus
                rates[(p.account, p.user)] += share(r)
            elif isinstance(d, Reject):
                queue.remove(pending.pop(d.workload))
                outcomes[d.workload].rejected = d.reason
    submitted = {j.account for j in jobs}
    total = sum(accounts[a].shares if a in accounts else 1.0 for a in submitted) or 1.0
    target = {a: (accounts[a].shares if a in accounts else 1.0) / total for a in submitted}
    return Result(list(outcomes.values()), total_mc / 1000, wall, cpu, cycles, target)
