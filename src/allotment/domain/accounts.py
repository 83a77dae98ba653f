"""The accounts tree and memberships.

An account is named uniquely (as in Slurm) and identified in messages and the API by its slash
path from the root, ``physics/lab-a/proj-x``. A membership gives a user a role on an account
and, through it, on the account's whole subtree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

__all__ = [
    "Membership",
    "Role",
    "ancestors",
    "find_cycle",
    "is_within",
    "paths_by_name",
]


class Role(StrEnum):
    #: May submit workloads charged to the account and see their own.
    MEMBER = "member"
    #: May administer the account's subtree and see all its workloads.
    MANAGER = "manager"
    #: May see the subtree's workloads and usage, never spend.
    VIEWER = "viewer"


@dataclass(frozen=True, slots=True)
class Membership:
    user: str
    #: Slash path of the account.
    account: str
    role: Role


def is_within(path: str, root: str) -> bool:
    """True when ``path`` is ``root`` or lies below it."""
    return path == root or path.startswith(root + "/")


@lru_cache(maxsize=65_536)
def _ancestors(path: str) -> tuple[str, ...]:
    parts = path.split("/")
    return tuple("/".join(parts[:i]) for i in range(1, len(parts)))


def ancestors(path: str) -> list[str]:
    """Proper ancestors of a path, root first: ``a/b/c`` → ``[a, a/b]``."""
    return list(_ancestors(path))


def find_cycle(parents: Mapping[str, str | None]) -> list[str] | None:
    """A cycle among ``name → parent`` links, as the names in order, or None."""
    state: dict[str, int] = {}  # 1 = on the current walk, 2 = known acyclic
    for start in parents:
        walk: list[str] = []
        node: str | None = start
        while node is not None and node in parents and state.get(node) != 2:
            if state.get(node) == 1:
                return walk[walk.index(node) :] + [node]
            state[node] = 1
            walk.append(node)
            node = parents[node]
        for n in walk:
            state[n] = 2
    return None


def paths_by_name(parents: Mapping[str, str | None]) -> dict[str, str]:
    """Slash path of every account, from ``name → parent``; the links must be acyclic."""
    paths: dict[str, str] = {}

    def path_of(name: str) -> str:
        if name not in paths:
            parent = parents.get(name)
            paths[name] = name if parent is None else f"{path_of(parent)}/{name}"
        return paths[name]

    for name in parents:
        path_of(name)
    return paths
