"""The policy → scheduler step: the parts of a policy the scheduler needs, as its values.

One step for the controller (the snapshot it schedules live) and the simulator (what-ifs over
recorded history), so a what-if schedules under exactly the rules the service does.
"""

from __future__ import annotations

from allotment.config.models import LimitSpec, Policy
from allotment.config.resolve import account_paths, resolve_account
from allotment.domain.resources import Resources
from allotment.scheduler.snapshot import AccountState, Allocation, Limits, NodeState, Weights

__all__ = ["scheduler_view"]


def _limits(spec: LimitSpec | None) -> Limits | None:
    if spec is None:
        return None
    return Limits(spec.cpus, spec.memory, spec.gpus, spec.workloads)


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
