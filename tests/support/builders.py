"""Builders for the values tests make over and over: resources, the scheduler's pending and
running workloads and its snapshot, a caller's principal, a workload as the API answers it.

Each builder takes the fewest arguments a test names, with defaults every test shares (one
pool ``p``, accounts ``a`` and ``b``, user ``u``, four-CPU nodes), so a test says only what
matters to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from allotment.domain.accounts import Membership, Role
from allotment.domain.permissions import Principal, Scope, expand_scopes
from allotment.domain.resources import Resources
from allotment.scheduler.snapshot import AccountState, NodeState, Pending, Running, Snapshot
from allotment.schemas import WorkloadOut

__all__ = ["G", "NOW", "cpus", "pending", "principal", "running", "snapshot", "workload_out"]

G = 2**30
#: The time tests call now, unless they move it.
NOW = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)


def cpus(n: float, mem: int = 1, gpus: dict[str, int] | None = None) -> Resources:
    """``n`` CPUs, ``mem`` GiB and GPUs by model."""
    return Resources.of(n, mem * G, gpus)


def pending(
    i: int,
    account: str = "a",
    user: str = "u",
    r: Resources | None = None,
    at: float = 0,
    wall: float = 100,
    pool: str = "p",
    **kw: Any,
) -> Pending:
    """Workload ``i`` waiting since ``at`` for ``r`` (one CPU) during ``wall`` seconds."""
    return Pending(i, user, account, pool, r or cpus(1), at, wall, **kw)


def running(
    i: int,
    account: str = "a",
    user: str = "u",
    r: Resources | None = None,
    end: float = 100,
    node: str = "n1",
    **kw: Any,
) -> Running:
    """Workload ``i`` running ``r`` (one CPU) on ``node`` of pool ``p`` since 0, until ``end``."""
    return Running(i, user, account, "p", node, r or cpus(1), 0, end, **kw)


def snapshot(
    waiting: Sequence[Pending],
    run: Sequence[Running] | None = None,
    *,
    nodes: int = 1,
    size: Resources | None = None,
    accounts: dict[str, AccountState] | None = None,
    **kw: Any,
) -> Snapshot:
    """The scheduler's view at 0: ``nodes`` nodes of ``size`` (4 CPUs, 16 GiB) in pool ``p``,
    accounts ``a`` and ``b``."""
    return Snapshot(
        now=0,
        accounts=accounts or {"a": AccountState("a"), "b": AccountState("b")},
        nodes=[NodeState("p", f"n{i + 1}", size or cpus(4, 16)) for i in range(nodes)],
        running=run or [],
        pending=waiting,
        **kw,
    )


def principal(
    user: str,
    *memberships: tuple[str, Role],
    scopes: tuple[Scope, ...] = (Scope.READ, Scope.SUBMIT, Scope.MANAGE),
) -> Principal:
    """``user`` with a role on each account path named, holding ``scopes``."""
    return Principal(
        user, expand_scopes(scopes), tuple(Membership(user, a, r) for a, r in memberships)
    )


def workload_out(**kw: object) -> WorkloadOut:
    """A pending session of alice's on account ``lab``, as the API answers it."""
    base: dict[str, object] = dict(
        id=7, kind="session", name="", user="alice", account="lab", pool="box", profile="small",
        cpus=1.0, memory=2**30, gpus={}, status="pending", target="running",
        reason="waiting for 1 CPU, 1G to free up (next in line)", command=["x"],
        max_runtime=None, created_at=NOW, updated_at=NOW,
    )  # fmt: skip
    base.update(kw)
    return WorkloadOut.model_validate(base)
