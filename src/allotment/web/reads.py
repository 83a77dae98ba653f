"""The database reads behind the pages: workloads with their cost from the ledger, and
spending and use from the daily totals (``usage_days``), never a scan of the workloads'
history. Each read is bounded: a page of rows, or one aggregate over a date range."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import case, false, func, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from allotment.db.tables import (
    Account,
    AuditEntry,
    LedgerEntry,
    OpenCharge,
    Pool,
    Profile,
    UsageDay,
    User,
    Workload,
)
from allotment.domain.workloads import ACTIVE, WorkloadState

__all__ = [
    "AccountRow",
    "LeaderRow",
    "MeasuredUse",
    "WorkloadRow",
    "accounts",
    "audit_page",
    "costs_of",
    "measured_use",
    "pool_use_by_day",
    "quota_in_use",
    "spending_by_account",
    "spent_by_day",
    "subtree_ids",
    "usage_by_day",
    "usage_by_user",
    "workloads_page",
]


@dataclass(frozen=True, slots=True)
class AccountRow:
    id: int
    path: str
    shares: int
    origin: str


async def accounts(session: AsyncSession) -> list[AccountRow]:
    """Every account in use (the tree is small: a few thousand at most)."""
    rows = await session.execute(
        select(Account.id, Account.path, Account.shares, Account.origin)
        .where(Account.archived_at.is_(None))
        .order_by(Account.path)
    )
    return [AccountRow(*r) for r in rows]


def subtree_ids(all_accounts: Sequence[AccountRow], path: str) -> list[int]:
    return [a.id for a in all_accounts if a.path == path or a.path.startswith(path + "/")]


@dataclass(frozen=True, slots=True)
class WorkloadRow:
    id: int
    kind: str
    name: str
    user: str
    account: str
    pool: str | None
    profile: str | None
    status: WorkloadState
    reason: str
    position: int | None
    expected_start: datetime | None
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    millicpus: int
    memory: int
    gpus: int


_ProfileT = aliased(Profile)


async def workloads_page(
    session: AsyncSession,
    *,
    user_id: int | None = None,
    account_ids: Collection[int] | None = None,
    waiting: bool = False,
    before: int | None = None,
    offset: int = 0,
    limit: int = 25,
) -> list[WorkloadRow]:
    """Up to ``limit`` + 1 workloads (the extra one says a next page exists). Waiting ones
    (the queue) come by pool and place, paged by ``offset``; others newest first, paged by
    ``before`` (an id)."""
    q = (
        select(
            Workload.id,
            Workload.kind,
            Workload.name,
            User.name,
            Account.path,
            Pool.name,
            _ProfileT.name,
            Workload.status,
            Workload.reason,
            Workload.position,
            Workload.expected_start,
            Workload.created_at,
            Workload.started_at,
            Workload.ended_at,
            Workload.millicpus,
            Workload.memory,
            Workload.gpus,
        )
        .join(User, User.id == Workload.user_id)
        .join(Account, Account.id == Workload.account_id)
        .outerjoin(Pool, Pool.id == Workload.pool_id)
        .outerjoin(_ProfileT, _ProfileT.id == Workload.profile_id)
    )
    if user_id is not None:
        q = q.where(Workload.user_id == user_id)
    if account_ids is not None:
        q = q.where(Workload.account_id.in_(list(account_ids)))
    if waiting:
        q = q.where(Workload.status == int(WorkloadState.PENDING))
        q = q.order_by(Pool.name, Workload.position.is_(None), Workload.position, Workload.id)
        q = q.offset(offset)
    else:
        if before is not None:
            q = q.where(Workload.id < before)
        q = q.order_by(Workload.id.desc())
    rows: list[Any] = list(await session.execute(q.limit(limit + 1)))
    return [
        WorkloadRow(
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            r[5],
            r[6],
            WorkloadState(r[7]),
            r[8],
            r[9],
            r[10],
            r[11],
            r[12],
            r[13],
            r[14],
            r[15],
            sum(int(n) for n in (r[16] or {}).values()),
        )  # fmt: skip
        for r in rows
    ]


async def costs_of(session: AsyncSession, ids: Collection[int]) -> dict[int, int]:
    """What each workload cost so far (micros): its ledger entries and its open charge."""
    if not ids:
        return {}
    out: dict[int, int] = defaultdict(int)
    for wid, amount in await session.execute(
        select(LedgerEntry.workload_id, func.sum(LedgerEntry.amount))
        .where(LedgerEntry.workload_id.in_(list(ids)))
        .group_by(LedgerEntry.workload_id)
    ):
        if wid is not None:
            out[int(wid)] += int(amount or 0)
    for wid, amount in await session.execute(
        select(OpenCharge.workload_id, OpenCharge.amount).where(
            OpenCharge.workload_id.in_(list(ids)), OpenCharge.closed.is_(False)
        )
    ):
        out[int(wid)] += int(amount or 0)
    return dict(out)


async def spending_by_account(session: AsyncSession, user_id: int, since: date) -> dict[int, int]:
    """A user's spending per account since ``since`` (micros)."""
    rows = await session.execute(
        select(UsageDay.account_id, func.sum(UsageDay.amount))
        .where(UsageDay.user_id == user_id, UsageDay.day >= since)
        .group_by(UsageDay.account_id)
    )
    return {int(a): int(s or 0) for a, s in rows}


async def usage_by_user(
    session: AsyncSession, account_ids: Collection[int], first: date, last: date
) -> list[LeaderRow]:
    """Each user's spending and requested resources in an account subtree over
    ``first``..``last``, by cost: the leaderboard, and who the plot draws on their own."""
    rows = await session.execute(
        select(
            User.name,
            func.sum(UsageDay.amount),
            func.sum(UsageDay.cpu_seconds),
            func.sum(UsageDay.memory_gib_seconds),
            func.sum(UsageDay.gpu_seconds),
            func.sum(UsageDay.used_cpu_seconds),
            UsageDay.user_id,
        )
        .join(User, User.id == UsageDay.user_id)
        .where(
            UsageDay.account_id.in_(list(account_ids)),
            UsageDay.day >= first,
            UsageDay.day <= last,
        )
        .group_by(UsageDay.user_id, User.name)
    )
    out = [
        LeaderRow(
            u, int(a or 0), float(c or 0), float(m or 0), float(g or 0), float(x or 0), int(i)
        )
        for u, a, c, m, g, x, i in rows
    ]
    out.sort(key=lambda r: (-r.amount, r.user))
    return out


async def usage_by_day(
    session: AsyncSession,
    account_ids: Collection[int],
    first: date,
    last: date,
    users: Collection[int],
) -> list[tuple[date, int, int]]:
    """(day, user id, micros) over an account subtree for ``users``; everyone else's summed
    under user id 0. One scan, and at most (len(users) + 1) rows a day."""
    who = (
        case((UsageDay.user_id.in_(list(users)), UsageDay.user_id), else_=0)
        if users
        else literal(0)
    )
    rows = await session.execute(
        select(UsageDay.day, who.label("who"), func.sum(UsageDay.amount))
        .where(
            UsageDay.account_id.in_(list(account_ids)),
            UsageDay.day >= first,
            UsageDay.day <= last,
        )
        .group_by(UsageDay.day, "who")
    )
    return [(d, int(u), int(a or 0)) for d, u, a in rows]


async def spent_by_day(
    session: AsyncSession,
    account_ids: Collection[int],
    pool_id: int | None,
    first: date,
    last: date,
) -> dict[date, int]:
    """Spending per day over an account subtree, in one pool or all (``pool_id`` None)."""
    q = select(UsageDay.day, func.sum(UsageDay.amount)).where(
        UsageDay.account_id.in_(list(account_ids)), UsageDay.day >= first, UsageDay.day <= last
    )
    if pool_id is not None:
        q = q.where(UsageDay.pool_id == pool_id)
    rows = await session.execute(q.group_by(UsageDay.day))
    return {d: int(s or 0) for d, s in rows}


@dataclass(frozen=True, slots=True)
class LeaderRow:
    user: str
    amount: int
    cpu_seconds: float
    memory_gib_seconds: float
    gpu_seconds: float
    used_cpu_seconds: float
    user_id: int = 0

    @property
    def efficiency(self) -> float | None:
        """Used CPU ÷ requested CPU; None where nothing was requested or measured."""
        if self.cpu_seconds <= 0 or self.used_cpu_seconds <= 0:
            return None
        return self.used_cpu_seconds / self.cpu_seconds


async def pool_use_by_day(
    session: AsyncSession, first: date, last: date
) -> list[tuple[date, str, float, float, float]]:
    """(day, pool, CPU core-seconds, GiB-seconds, GPU-seconds) requested, every pool."""
    rows = await session.execute(
        select(
            UsageDay.day,
            Pool.name,
            func.sum(UsageDay.cpu_seconds),
            func.sum(UsageDay.memory_gib_seconds),
            func.sum(UsageDay.gpu_seconds),
        )
        .join(Pool, Pool.id == UsageDay.pool_id)
        .where(UsageDay.day >= first, UsageDay.day <= last)
        .group_by(UsageDay.day, Pool.name)
    )
    return [(d, p, float(c or 0), float(m or 0), float(g or 0)) for d, p, c, m, g in rows]


async def quota_in_use(
    session: AsyncSession, account_ids: Collection[int]
) -> dict[str, tuple[int, int, int]]:
    """Pool → (millicpus, bytes, GPUs) held now by an account subtree's active workloads."""
    rows = await session.execute(
        select(Pool.name, Workload.millicpus, Workload.memory, Workload.gpus)
        .join(Pool, Pool.id == Workload.pool_id)
        .where(
            Workload.account_id.in_(list(account_ids)),
            Workload.status.in_([int(s) for s in ACTIVE]),
        )
    )
    out: dict[str, tuple[int, int, int]] = {}
    for pool, mc, mem, gpus in rows:
        c, m, g = out.get(pool, (0, 0, 0))
        out[pool] = (c + mc, m + mem, g + sum(int(n) for n in (gpus or {}).values()))
    return out


@dataclass(frozen=True, slots=True)
class MeasuredUse:
    """One workload's charged time and measured use from its ledger entries."""

    workload_id: int
    user: str
    account: str
    name: str
    millicpus: int
    memory: int
    gpus: int
    start: datetime
    end: datetime
    amount: int
    used_cpu_seconds: float | None
    peak_memory: int | None
    gpu_utilisation: float | None


async def measured_use(
    session: AsyncSession,
    since: datetime,
    *,
    user_id: int | None,
    account_ids: Collection[int] | None,
) -> list[MeasuredUse]:
    """Per workload charged since ``since``: what it requested, used and cost. Only the
    caller's own (``user_id``) and those of ``account_ids``; both None: every workload."""
    q = (
        select(
            LedgerEntry.workload_id,
            User.name,
            Account.path,
            Workload.name,
            func.max(LedgerEntry.millicpus),
            func.max(LedgerEntry.memory),
            func.min(LedgerEntry.start),
            func.max(LedgerEntry.end),
            func.sum(LedgerEntry.amount),
            func.sum(LedgerEntry.used_cpu_seconds),
            func.max(LedgerEntry.peak_memory),
            func.avg(LedgerEntry.gpu_utilisation),
        )
        .join(User, User.id == LedgerEntry.user_id)
        .join(Account, Account.id == LedgerEntry.account_id)
        .join(Workload, Workload.id == LedgerEntry.workload_id)
        .where(LedgerEntry.start >= since, LedgerEntry.workload_id.is_not(None))
        .group_by(LedgerEntry.workload_id, User.name, Account.path, Workload.name)
    )
    if user_id is not None or account_ids is not None:
        scope: list[Any] = []
        if user_id is not None:
            scope.append(LedgerEntry.user_id == user_id)
        if account_ids:
            scope.append(LedgerEntry.account_id.in_(list(account_ids)))
        q = q.where(or_(*scope) if scope else false())
    rows: list[Any] = list((await session.execute(q)).all())
    ids = [int(r[0]) for r in rows]
    gpus: dict[int, int] = {}
    for chunk in range(0, len(ids), 1000):
        for wid, g in await session.execute(
            select(Workload.id, Workload.gpus).where(Workload.id.in_(ids[chunk : chunk + 1000]))
        ):
            gpus[int(wid)] = sum(int(n) for n in (g or {}).values())
    return [
        MeasuredUse(
            int(r[0]),
            r[1],
            r[2],
            r[3],
            int(r[4]),
            int(r[5]),
            gpus.get(int(r[0]), 0),
            r[6],
            r[7],
            int(r[8] or 0),
            None if r[9] is None else float(r[9]),
            None if r[10] is None else int(r[10]),
            None if r[11] is None else float(r[11]),
        )
        for r in rows
    ]


async def audit_page(
    session: AsyncSession, *, before: int | None, limit: int = 25
) -> list[AuditEntry]:
    q = select(AuditEntry).order_by(AuditEntry.id.desc())
    if before is not None:
        q = q.where(AuditEntry.id < before)
    return list((await session.execute(q.limit(limit + 1))).scalars())
