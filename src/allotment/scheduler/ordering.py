"""Queue order: priority (fair share, age, profile), then submission time, then id."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from allotment.scheduler.fairshare import fair_share_factors
from allotment.scheduler.snapshot import Pending, Snapshot

__all__ = ["order_queue", "priorities"]


def priorities(snap: Snapshot, pending: Sequence[Pending]) -> dict[int, float]:
    """Priority of each pending workload (higher runs first)."""
    w = snap.weights
    factors: Mapping[tuple[str, str], float] = {}
    if snap.policy == "fairshare" and snap.fair_share is not None:
        factors = snap.fair_share
    elif snap.policy == "fairshare":
        shares = {path: a.shares for path, a in snap.accounts.items()}
        factors = fair_share_factors(shares, snap.usage, ((p.account, p.user) for p in pending))
    out = {}
    for p in pending:
        age = min(max(snap.now - p.submitted, 0.0) / w.max_age, 1.0) if w.max_age > 0 else 0.0
        fs = factors.get((p.account, p.user), 0.0)
        out[p.id] = w.fairshare * fs + w.age * age + p.priority
    return out


def order_queue(snap: Snapshot) -> list[Pending]:
    """The pending workloads in the order the scheduler considers them."""
    if snap.policy != "fairshare":
        return sorted(snap.pending, key=lambda p: (p.submitted, p.id))
    prio = priorities(snap, snap.pending)
    return sorted(snap.pending, key=lambda p: (-prio[p.id], p.submitted, p.id))
