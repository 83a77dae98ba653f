"""Queue order: priority (fair share, age, profile), then submission time, then id.

``priority`` is the one rule: the live scheduler sorts by it here, and trace replay
(``sim.queue``) keeps its queue sorted by the same function, so a what-if orders jobs exactly as
the service would, before and after they reach ``max_age``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from allotment.scheduler.fairshare import fair_share_factors
from allotment.scheduler.snapshot import Pending, Snapshot, Weights

__all__ = ["age_factor", "order_queue", "priorities", "priority"]


def age_factor(waited: float, max_age: float) -> float:
    """0 at submission, rising evenly to 1 at ``max_age`` seconds of waiting, then capped at 1
    (Slurm's PriorityMaxAge): a job that has waited a week gains nothing more by waiting."""
    return min(max(waited, 0.0) / max_age, 1.0) if max_age > 0 else 0.0


def priority(p: Pending, fair_share: float, weights: Weights, now: float) -> float:
    """Priority of one pending workload at ``now`` (higher runs first), given its
    (account, user)'s fair-share factor."""
    # age_factor, inlined: this runs for every pending workload in every cycle.
    w = weights
    age = min(max(now - p.submitted, 0.0) / w.max_age, 1.0) if w.max_age > 0 else 0.0
    return w.fairshare * fair_share + w.age * age + p.priority


def priorities(snap: Snapshot, pending: Sequence[Pending]) -> dict[int, float]:
    """Priority of each pending workload (higher runs first)."""
    factors: Mapping[tuple[str, str], float] = {}
    if snap.policy == "fairshare" and snap.fair_share is not None:
        factors = snap.fair_share
    elif snap.policy == "fairshare":
        shares = {path: a.shares for path, a in snap.accounts.items()}
        factors = fair_share_factors(shares, snap.usage, ((p.account, p.user) for p in pending))
    return {
        p.id: priority(p, factors.get((p.account, p.user), 0.0), snap.weights, snap.now)
        for p in pending
    }


def order_queue(snap: Snapshot) -> list[Pending]:
    """The pending workloads in the order the scheduler considers them."""
    if snap.policy != "fairshare":
        return sorted(snap.pending, key=lambda p: (p.submitted, p.id))
    prio = priorities(snap, snap.pending)
    return sorted(snap.pending, key=lambda p: (-prio[p.id], p.submitted, p.id))
