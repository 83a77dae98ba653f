"""What-if: replay recorded workloads under the policy in force and under a proposed one.

The service's history gives each workload's submission time, size, account, user and pool. Until
workloads run through the service, a workload's run time is not recorded: it is taken as its
maximum runtime (an upper bound, so waits come out pessimistic) — the same for both policies,
so the comparison between them stands.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from allotment.config.models import Policy
from allotment.config.scheduler_view import scheduler_view
from allotment.domain.resources import Resources
from allotment.schemas import WorkloadOut
from allotment.sim.metrics import Metrics, measure
from allotment.sim.replay import SimJob, replay_jobs

__all__ = ["History", "compare", "history_jobs"]

DEFAULT_RUNTIME = 3600.0


@dataclass(frozen=True)
class History:
    jobs: list[SimJob]
    #: Workloads left out, with why (a pool the policy lacks, and so on).
    skipped: int


def history_jobs(workloads: Iterable[WorkloadOut]) -> History:
    jobs, skipped = [], 0
    for w in workloads:
        # Without a pool there is nothing to place; a workload stopped before it ran (cancelled
        # while pending) never used anything.
        if w.pool is None or w.status in ("stopped", "failed"):
            skipped += 1
            continue
        runtime = float(w.max_runtime or DEFAULT_RUNTIME)
        jobs.append(
            SimJob(
                w.id,
                w.created_at.timestamp(),
                runtime,
                runtime,
                Resources.of(w.cpus, w.memory, w.gpus),
                w.user,
                w.account,
                w.pool,
            )
        )
    return History(jobs, skipped)


def replay_under(history: History, policy: Policy) -> Metrics:
    accounts, nodes, users, default, weights = scheduler_view(policy)
    result = replay_jobs(
        history.jobs,
        nodes,
        accounts,
        policy.scheduling.policy,
        user_limits=users,
        default_limits=default,
        half_life=float(policy.scheduling.half_life),
        weights=weights,
    )
    return measure(result)


def compare(history: History, current: Policy, proposed: Policy) -> tuple[Metrics, Metrics]:
    return replay_under(history, current), replay_under(history, proposed)
