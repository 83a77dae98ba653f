"""Pools and profiles: what there is, and what you may launch."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select

from allotment.api.deps import CallerDep, StateDep
from allotment.api.views import pool_out, profile_out
from allotment.db.tables import Pool, Profile
from allotment.domain.accounts import is_within
from allotment.domain.permissions import Principal
from allotment.errors import NotFound
from allotment.schemas import Page, PoolOut, ProfileOut

__all__ = ["router"]

router = APIRouter(tags=["catalog"])


Limit = Annotated[int, Query(ge=1, le=1000)]
Cursor = Annotated[str | None, Query(description="From the previous page's `next_cursor`.")]


@router.get("/pools", response_model=Page[PoolOut])
async def list_pools(
    caller: CallerDep,
    state: StateDep,
    archived: Annotated[bool, Query(description="Include archived pools.")] = False,
    backend: Annotated[str | None, Query(description="Only pools of this backend.")] = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Page[PoolOut]:
    async with state.db.read() as session:
        q = select(Pool).order_by(Pool.name)
        if not archived:
            q = q.where(Pool.archived_at.is_(None))
        if backend is not None:
            q = q.where(Pool.backend == backend)
        if cursor is not None:
            q = q.where(Pool.name > cursor)
        rows = list((await session.execute(q.limit(limit + 1))).scalars())
    items = [pool_out(p) for p in rows[:limit]]
    return Page[PoolOut](items=items, next_cursor=items[-1].name if len(rows) > limit else None)


@router.get("/pools/{name}", response_model=PoolOut)
async def get_pool(name: str, caller: CallerDep, state: StateDep) -> PoolOut:
    async with state.db.read() as session:
        pool = (await session.execute(select(Pool).where(Pool.name == name))).scalar_one_or_none()
        if pool is None:
            raise NotFound(f"There is no pool '{name}'.")
        return pool_out(pool)


@router.get("/profiles", response_model=Page[ProfileOut])
async def list_profiles(
    caller: CallerDep,
    state: StateDep,
    all: Annotated[bool, Query(description="Admins: every profile, usable by you or not.")] = False,
    pool: Annotated[str | None, Query(description="Only profiles on this pool.")] = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Page[ProfileOut]:
    """The profiles you may launch: offered to everyone, or to an account you can charge."""
    p = caller.principal
    out: list[ProfileOut] = []
    more = False
    async with state.db.read() as session:
        q = (
            select(Profile, Pool.name)
            .join(Pool, Pool.id == Profile.pool_id)
            .where(Profile.archived_at.is_(None))
            .order_by(Profile.name)
        )
        if pool is not None:
            q = q.where(Pool.name == pool)
        if cursor is not None:
            q = q.where(Profile.name > cursor)
        for profile, pool_name in await session.execute(q):
            offered: list[str] = profile.spec.get("accounts", [])
            if not (not offered or _may_charge_within(p, offered) or (all and p.is_admin)):
                continue
            if len(out) == limit:
                more = True
                break
            out.append(profile_out(profile, pool_name))
    return Page[ProfileOut](items=out, next_cursor=out[-1].name if more else None)


def _may_charge_within(p: Principal, roots: list[str]) -> bool:
    """Whether the caller can charge some account inside one of ``roots`` (the same rule as
    submission: members their own account, managers anything below theirs)."""
    return any(
        (m.role in ("member", "manager") and is_within(m.account, root))
        or (m.role == "manager" and is_within(root, m.account))
        for m in p.memberships
        for root in roots
    )
