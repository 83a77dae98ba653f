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
from allotment.config.rules import account_paths, resolve_account
from allotment.domain.resources import Resources
from allotment.scheduler.snapshot import AccountState, Allocation, Limits, NodeState, Weights
from allotment.schemas import WorkloadOut
from allotment.sim.metrics import Metrics, measure
from allotment.sim.replay import SimJob, replay_jobs

__all__ = ["History", "compare", "history_jobs", "scheduler_view"]

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


def _limits(spec: object) -> Limits | None:
    if spec is None:
        return None
    return Limits(
        getattr(spec, "cpus", None),
        getattr(spec, "memory", None),
        getattr(spec, "gpus", None),
        getattr(spec, "workloads", None),
    )


def scheduler_view(
    policy: Policy,
) -> tuple[dict[str, AccountState], list[NodeState], dict[str, Limits], Limits, Weights]:
    """The parts of a policy the scheduler needs: accounts (by path), nodes, limits, weights."""
    paths = account_paths(policy)
    allocations: dict[str, dict[str, Allocation]] = {p: {} for p in paths.values()}
    for a in policy.allocations:
        name = resolve_account(policy, a.account)
        if name is None:
            continue
        q, b = a.quota, a.borrowing_limit
        allocations[paths[name]][a.pool] = Allocation(
            quota=Resources.of(q.cpus, q.memory, q.gpus),
            borrowing_limit=Resources.of(b.cpus, b.memory, b.gpus) if b else None,
        )
    account_limits = {
        paths[n]: _limits(spec)
        for ref, spec in policy.limits.accounts.items()
        if (n := resolve_account(policy, ref)) is not None
    }
    accounts = {
        path: AccountState(
            path, float(policy.accounts[name].shares), account_limits.get(path), allocations[path]
        )
        for name, path in paths.items()
    }
    nodes = [
        NodeState(pool, n.name, Resources.of(n.cpus, n.memory, n.gpus))
        for pool, spec in policy.pools.items()
        for n in spec.nodes
    ]
    users = {u: lim for u, spec in policy.limits.users.items() if (lim := _limits(spec))}
    s = policy.scheduling
    weights = Weights(s.fairshare_weight, s.age_weight, float(s.max_age))
    return accounts, nodes, users, _limits(policy.limits.default) or Limits(), weights


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
