"""Pools and profiles: what there is, and what you may launch.

A pool's nodes carry their state where the pool's backend places work itself (Slurm): the
backend's own word (idle, mixed, drained, down…) and why an administrator or Slurm took a node
out, so that ``allot pools`` shows a drained node with its reason. States come from
``Backend.capacity()`` (one ``sinfo``), kept for a few seconds so that listing pools in a loop
does not run one per request.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select

from allotment.api.deps import AppState, CallerDep, StateDep
from allotment.api.views import pool_out, profile_out
from allotment.backends.base import Backend, BackendUnavailable
from allotment.db.tables import Pool, Profile
from allotment.domain.accounts import is_within
from allotment.domain.permissions import Principal
from allotment.errors import NotFound
from allotment.schemas import Page, PoolOut, ProfileOut

__all__ = ["router"]

router = APIRouter(tags=["catalog"])

#: How long a backend's node states are reused.
STATES_SECONDS = 5.0
#: How long a listing waits for them; past it the nodes show "unknown" with the reason (a
#: Slurm command may hang until the policy's ``slurm.command_timeout``, 30 s by default).
STATES_WAIT_SECONDS = 3.0


@dataclass
class _States:
    backend: Backend
    expires: float
    #: (state, reason) by node name.
    nodes: dict[str, tuple[str, str]]
    #: Why none could be read ("" when they were).
    unknown: str = ""


#: By ``id(backend)``; the entry keeps its backend, so an id reused later is not mistaken.
_states: dict[int, _States] = {}


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
    items = [await _with_states(state, pool_out(p)) for p in rows[:limit]]
    return Page[PoolOut](items=items, next_cursor=items[-1].name if len(rows) > limit else None)


@router.get("/pools/{name}", response_model=PoolOut)
async def get_pool(name: str, caller: CallerDep, state: StateDep) -> PoolOut:
    async with state.db.read() as session:
        pool = (await session.execute(select(Pool).where(Pool.name == name))).scalar_one_or_none()
        if pool is None:
            raise NotFound(f"There is no pool '{name}'.")
        out = pool_out(pool)
    return await _with_states(state, out)


async def _with_states(state: AppState, pool: PoolOut) -> PoolOut:
    """The pool with its nodes' states, where its backend places work itself and reports
    them; unchanged otherwise (the local backend's one node has free resources, no state)."""
    if pool.archived:
        return pool
    backend = await state.backend(pool.backend)
    if backend is None or not backend.places_itself:
        return pool
    states = await _node_states(backend)
    nodes = []
    for node in pool.nodes:
        if states.unknown:
            seen: tuple[str, str] | None = ("unknown", states.unknown)
        else:
            seen = states.nodes.get(node.name)
        if seen is None:  # declared by the policy, unknown to the backend
            seen = ("unknown", f"not reported by the {pool.backend} backend")
        nodes.append(node.model_copy(update={"state": seen[0], "reason": seen[1] or None}))
    return pool.model_copy(update={"nodes": nodes})


async def _node_states(backend: Backend) -> _States:
    """The backend's node states, read at most once per ``STATES_SECONDS``."""
    now = time.monotonic()
    cached = _states.get(id(backend))
    if cached is not None and cached.backend is backend and cached.expires > now:
        return cached
    fresh = _States(backend, now + STATES_SECONDS, {})
    try:
        nodes = await asyncio.wait_for(backend.capacity(), STATES_WAIT_SECONDS)
        fresh.nodes = {n.name: (n.state, n.reason) for n in nodes}
    except BackendUnavailable as e:
        fresh.unknown = str(e) or "the backend does not answer"
    except TimeoutError:
        fresh.unknown = f"the backend did not answer within {STATES_WAIT_SECONDS:g} s"
    _states[id(backend)] = fresh
    return fresh


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
