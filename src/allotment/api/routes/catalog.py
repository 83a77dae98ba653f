"""Pools and profiles: what there is, and what you may launch."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select

from allotment.api.deps import CallerDep, StateDep
from allotment.api.views import pool_out, profile_out
from allotment.db.tables import Pool, Profile
from allotment.domain.accounts import is_within
from allotment.errors import NotFound
from allotment.schemas import PoolOut, ProfileOut

__all__ = ["router"]

router = APIRouter(tags=["catalog"])


@router.get("/pools", response_model=list[PoolOut])
async def list_pools(
    caller: CallerDep,
    state: StateDep,
    archived: Annotated[bool, Query(description="Include archived pools.")] = False,
) -> list[PoolOut]:
    async with state.db.read() as session:
        q = select(Pool).order_by(Pool.name)
        if not archived:
            q = q.where(Pool.archived_at.is_(None))
        return [pool_out(p) for p in (await session.execute(q)).scalars()]


@router.get("/pools/{name}", response_model=PoolOut)
async def get_pool(name: str, caller: CallerDep, state: StateDep) -> PoolOut:
    async with state.db.read() as session:
        pool = (await session.execute(select(Pool).where(Pool.name == name))).scalar_one_or_none()
        if pool is None:
            raise NotFound(f"There is no pool '{name}'.")
        return pool_out(pool)


@router.get("/profiles", response_model=list[ProfileOut])
async def list_profiles(
    caller: CallerDep,
    state: StateDep,
    all: Annotated[bool, Query(description="Admins: every profile, usable by you or not.")] = False,
) -> list[ProfileOut]:
    """The profiles you may launch: offered to everyone, or to an account you can charge."""
    p = caller.principal
    out = []
    async with state.db.read() as session:
        rows = await session.execute(
            select(Profile, Pool.name)
            .join(Pool, Pool.id == Profile.pool_id)
            .where(Profile.archived_at.is_(None))
            .order_by(Profile.name)
        )
        for profile, pool in rows:
            offered: list[str] = profile.spec.get("accounts", [])
            usable = not offered or any(
                is_within(m.account, a) or is_within(a, m.account)
                for m in p.memberships
                for a in offered
                if m.role != "viewer"
            )
            if usable or (all and p.is_admin):
                out.append(profile_out(profile, pool))
    return out
