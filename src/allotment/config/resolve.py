"""Resolution of a policy's references: which account a name or path means, every account's
path, the GPUs a size asks for on a pool. The checks (``rules``), the database sync, the quote
and the scheduler's view of a policy all read a policy through these."""

from __future__ import annotations

from allotment.config.models import Policy, PoolSpec, SizeSpec
from allotment.domain.accounts import find_cycle, paths_by_name

__all__ = ["account_paths", "parents", "profile_gpus", "resolve_account", "resolve_parent"]


def resolve_account(policy: Policy, ref: str) -> str | None:
    """The name of the account ``ref`` names (by name or by path), or None."""
    if ref in policy.accounts:
        return ref
    leaf = ref.rsplit("/", 1)[-1]
    if leaf in policy.accounts and not find_cycle(parents(policy)):
        if account_paths(policy).get(leaf) == ref:
            return leaf
    return None


def parents(policy: Policy) -> dict[str, str | None]:
    """Each account's parent by name (None for a root and for a parent that does not exist)."""
    return {
        name: (resolve_parent(policy, spec.parent) if spec.parent else None)
        for name, spec in policy.accounts.items()
    }


def resolve_parent(policy: Policy, ref: str) -> str | None:
    """The name of the parent ``ref`` names, or None when no account has that name."""
    # A parent given as a path names its leaf; the path itself is checked once the tree is known.
    leaf = ref.rsplit("/", 1)[-1]
    return leaf if leaf in policy.accounts else None


def account_paths(policy: Policy) -> dict[str, str]:
    """Slash path of every account; the tree must be acyclic (``rules.check`` says when it is not)."""
    return paths_by_name(parents(policy))


def profile_gpus(size: SizeSpec, pool: PoolSpec) -> dict[str, int] | None:
    """GPUs by model a size asks for on a pool; None when a bare count is ambiguous."""
    if isinstance(size.gpus, dict):
        return {k: v for k, v in size.gpus.items() if v}
    if size.gpus == 0:
        return {}
    models = {m for node in pool.nodes for m in node.gpus}
    return {models.pop(): size.gpus} if len(models) == 1 else None
