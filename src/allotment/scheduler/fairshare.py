"""Hierarchical fair share after Slurm's Fair Tree.

Vocabulary:

- *S* (normalised shares) of a node: its shares / the sum of its siblings' shares (itself
  included).
- *U* (normalised usage): its usage / the sum of its siblings' usage; a node's usage is that of
  its whole subtree.
- *LevelFS* = S / U: above 1, the node used less than its share. No usage gives +∞.

The tree of accounts (users are leaves under their account, with one share each) is walked
depth first, visiting siblings by descending LevelFS; users are ranked in visit order and
``fairshare = 1 − rank / n``. If an account ranks above a sibling, all of its users rank above
all of the sibling's, so heavy use inside one lab never lowers another lab.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping

from allotment.domain.accounts import ancestors
from allotment.scheduler.gcpause import gc_paused

__all__ = ["fair_share_factors", "level_fs"]


def level_fs(shares: float, share_sum: float, usage: float, usage_sum: float) -> float:
    s = shares / share_sum if share_sum > 0 else 0.0
    if usage <= 0 or usage_sum <= 0:
        return math.inf if s > 0 else 0.0
    u = usage / usage_sum
    if u == 0.0:  # a usage too small to register against its siblings' counts as none
        return math.inf if s > 0 else 0.0
    return s / u


def fair_share_factors(
    shares: Mapping[str, float],
    usage: Mapping[tuple[str, str], float],
    users: Iterable[tuple[str, str]] = (),
) -> dict[tuple[str, str], float]:
    """Fair-share factor in [0, 1] of every (account path, user) in ``usage`` or ``users``.

    ``shares`` holds every account path (parents included). Users of one account share it
    equally.
    """
    with gc_paused():
        return _factors(shares, usage, users)


def _factors(
    shares: Mapping[str, float],
    usage: Mapping[tuple[str, str], float],
    users: Iterable[tuple[str, str]],
) -> dict[tuple[str, str], float]:
    leaves = set(usage) | set(users)
    children: dict[str, list[str]] = defaultdict(list)
    for path in shares:
        parent = path.rsplit("/", 1)[0] if "/" in path else ""
        children[parent].append(path)
    user_children: dict[str, list[tuple[str, str]]] = defaultdict(list)
    subtree_usage: dict[str, float] = defaultdict(float)
    for account, user in leaves:
        user_children[account].append((account, user))
        u = usage.get((account, user), 0.0)
        if u:
            subtree_usage[account] += u
            for anc in ancestors(account):
                subtree_usage[anc] += u

    order: list[tuple[tuple[str, str], tuple[float, ...]]] = []

    def visit(node: str, key: tuple[float, ...]) -> None:
        # Sub-accounts and users are siblings, as associations are in Slurm; a user has 1 share.
        kids: list[tuple[str, tuple[str, str] | None, float, float]] = [
            (k, None, shares[k], subtree_usage[k]) for k in children.get(node, [])
        ]
        kids += [(p[1], p, 1.0, usage.get(p, 0.0)) for p in user_children.get(node, [])]
        share_sum = sum(k[2] for k in kids)
        use_sum = sum(k[3] for k in kids)
        scored = sorted(
            (-level_fs(sh, share_sum, use, use_sum), user is not None, name, user)
            for name, user, sh, use in kids
        )
        for score, _, name, user in scored:
            if user is not None:
                order.append((user, (*key, score)))
            else:
                visit(name, (*key, score))

    visit("", ())
    n = len(order)
    out: dict[tuple[str, str], float] = {}
    rank = 0
    previous: tuple[float, ...] | None = None
    for i, (leaf, key) in enumerate(order):
        if key != previous:  # equal LevelFS all the way down: equal rank
            rank = i
            previous = key
        out[leaf] = 1.0 - rank / n if n else 1.0
    return out
