"""Queries over the tables, shaped for the API's needs and its hot paths.

Every list query is keyset-paginated on the primary key (newest first) and can also skip
whole pages; both use the composite indexes declared in ``tables``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, exists, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from allotment.db.tables import (
    Account,
    AdminToken,
    BudgetRow,
    LedgerEntry,
    Membership,
    OpenCharge,
    Pool,
    Profile,
    UsageDay,
    User,
    Workload,
)
from allotment.domain.accounts import Membership as DomainMembership
from allotment.domain.accounts import Role
from allotment.domain.workloads import TERMINAL

__all__ = [
    "WorkloadFilter",
    "Visibility",
    "WorkloadRow",
    "account_by_ref",
    "account_children",
    "account_referenced",
    "accounts_within",
    "unfinished_workloads",
    "admin_token",
    "ensure_user",
    "list_workloads",
    "memberships_of",
    "user_by_name",
    "workload_by_id",
    "workload_by_key",
]


async def user_by_name(session: AsyncSession, name: str) -> User | None:
    return (await session.execute(select(User).where(User.name == name))).scalar_one_or_none()


async def ensure_user(session: AsyncSession, name: str, now: datetime) -> User:
    """The user row for a hub user, created on first sight (a user needs no policy entry)."""
    user = await user_by_name(session, name)
    if user is not None:
        return user
    try:
        async with session.begin_nested():
            user = User(name=name, created_at=now)
            session.add(user)
    except IntegrityError:  # created concurrently by another request
        user = await user_by_name(session, name)
        assert user is not None
    return user


#: A policy's ``members: ["*"]`` makes every hub user a member of that account.
EVERYONE = "*"


async def memberships_of(session: AsyncSession, user: str) -> list[DomainMembership]:
    rows = await session.execute(
        select(Account.path, Membership.role)
        .join(Membership, Membership.account_id == Account.id)
        .join(User, User.id == Membership.user_id)
        .where(User.name.in_([user, EVERYONE]), Account.archived_at.is_(None))
    )
    # A user's own role on an account outranks what everyone has there.
    best: dict[str, Role] = {}
    for path, role in rows:
        r = Role(role)
        if path not in best or _RANK[r] > _RANK[best[path]]:
            best[path] = r
    return [DomainMembership(user, path, role) for path, role in best.items()]


_RANK = {Role.VIEWER: 0, Role.MEMBER: 1, Role.MANAGER: 2}


async def account_by_ref(session: AsyncSession, ref: str) -> Account | None:
    """An account by path, or by name when ``ref`` has no slash."""
    column = Account.path if "/" in ref else Account.name
    return (await session.execute(select(Account).where(column == ref))).scalar_one_or_none()


async def accounts_within(session: AsyncSession, roots: Sequence[str]) -> list[int]:
    """Ids of the accounts at or below any of ``roots`` (paths)."""
    if not roots:
        return []
    # Escaped: names may hold `_`, which LIKE reads as any character (`a_b/%` matched `a-b/x`).
    cond = or_(
        *(or_(Account.path == r, Account.path.startswith(r + "/", autoescape=True)) for r in roots)
    )
    return list((await session.execute(select(Account.id).where(cond))).scalars())


async def account_children(session: AsyncSession, account_id: int) -> list[Account]:
    """The accounts directly below one, archived ones included."""
    q = select(Account).where(Account.parent_id == account_id).order_by(Account.path)
    return list((await session.execute(q)).scalars())


async def account_referenced(session: AsyncSession, account_id: int) -> bool:
    """Whether history refers to an account (workloads, charges, daily totals, budgets), so
    that it must be archived rather than removed."""
    for table in (Workload, LedgerEntry, OpenCharge, UsageDay, BudgetRow):
        q = select(exists().where(table.account_id == account_id))
        if await session.scalar(q):
            return True
    return False


async def unfinished_workloads(session: AsyncSession, account_id: int) -> int:
    """How many workloads charged to an account are waiting or running."""
    q = select(func.count()).where(
        Workload.account_id == account_id, Workload.status.not_in([int(s) for s in TERMINAL])
    )
    return int(await session.scalar(q) or 0)


async def admin_token(session: AsyncSession, sha256: str) -> AdminToken | None:
    return (
        await session.execute(
            select(AdminToken).where(
                AdminToken.token_sha256 == sha256, AdminToken.revoked_at.is_(None)
            )
        )
    ).scalar_one_or_none()


@dataclass(frozen=True, slots=True)
class WorkloadRow:
    workload: Workload
    user: str
    account: str
    pool: str | None
    profile: str | None


def _workload_select() -> Select[Workload, str, str, str, str]:
    return (
        select(Workload, User.name, Account.path, Pool.name, Profile.name)
        .join(User, User.id == Workload.user_id)
        .join(Account, Account.id == Workload.account_id)
        .outerjoin(Pool, Pool.id == Workload.pool_id)
        .outerjoin(Profile, Profile.id == Workload.profile_id)
    )


def _rows(result: Any) -> list[WorkloadRow]:
    return [WorkloadRow(w, u, a, p, pr) for w, u, a, p, pr in result]


async def workload_by_id(session: AsyncSession, workload_id: int) -> WorkloadRow | None:
    rows = _rows(await session.execute(_workload_select().where(Workload.id == workload_id)))
    return rows[0] if rows else None


async def workload_by_key(session: AsyncSession, user_id: int, key: str) -> WorkloadRow | None:
    """The workload a user created with an idempotency key, if any."""
    rows = _rows(
        await session.execute(
            _workload_select().where(Workload.user_id == user_id, Workload.idempotency_key == key)
        )
    )
    return rows[0] if rows else None


@dataclass(frozen=True, slots=True)
class WorkloadFilter:
    #: Only these states (``WorkloadState`` values); empty means all.
    statuses: tuple[int, ...] = ()
    #: Only workloads charged to these accounts; None means any.
    account_ids: tuple[int, ...] | None = None
    #: Only this user's; None means any.
    user_id: int | None = None
    #: Only those created at or after this time.
    since: datetime | None = None
    #: Only this kind (``job``, ``session``…); None means any.
    kind: str | None = None
    #: Only the tasks of this job array; None means any.
    array_id: int | None = None


@dataclass(frozen=True, slots=True)
class Visibility:
    """What a caller may see: everything, or their own plus some accounts' workloads."""

    everything: bool
    user_id: int | None = None
    account_ids: tuple[int, ...] = ()


async def list_workloads(
    session: AsyncSession,
    flt: WorkloadFilter,
    visible: Visibility,
    *,
    limit: int,
    before_id: int | None = None,
    offset: int = 0,
) -> tuple[list[WorkloadRow], bool]:
    """One page, newest first, and whether more follow.

    The page's ids are found first, on the indexes alone, and only those rows are joined to
    their user, account, pool and profile: a deep page (a large offset) then skips index
    entries, not joined rows.
    """
    ids = select(Workload.id)
    if not visible.everything:
        mine = Workload.user_id == visible.user_id
        ids = ids.where(
            or_(mine, Workload.account_id.in_(visible.account_ids)) if visible.account_ids else mine
        )
    if flt.statuses:
        ids = ids.where(Workload.status.in_(flt.statuses))
    if flt.account_ids is not None:
        ids = ids.where(Workload.account_id.in_(flt.account_ids))
    if flt.user_id is not None:
        ids = ids.where(Workload.user_id == flt.user_id)
    if flt.since is not None:
        ids = ids.where(Workload.created_at >= flt.since)
    if flt.kind is not None:
        ids = ids.where(Workload.kind == flt.kind)
    if flt.array_id is not None:
        ids = ids.where(Workload.array_id == flt.array_id)
    if before_id is not None:
        ids = ids.where(Workload.id < before_id)
    ids = ids.order_by(Workload.id.desc()).offset(offset).limit(limit + 1)
    q = (
        _workload_select()
        .where(Workload.id.in_(ids.scalar_subquery()))
        .order_by(Workload.id.desc())
    )
    rows = _rows(await session.execute(q))
    return rows[:limit], len(rows) > limit
