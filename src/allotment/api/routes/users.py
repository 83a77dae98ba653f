"""Users: yourself, and the people in the subtrees you oversee."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from allotment.api.deps import CallerDep, StateDep
from allotment.api.routes.accounts import memberships_out
from allotment.db import repository as repo
from allotment.db.tables import Account, Membership, User
from allotment.domain.permissions import Principal
from allotment.errors import NotFound
from allotment.schemas import MembershipOut, Page, UserOut

__all__ = ["router"]

router = APIRouter(tags=["users"])


async def _users_out(
    session: AsyncSession, users: list[User], principal: Principal
) -> list[UserOut]:
    """Users with their default account and memberships, in two queries for the whole page.

    Only what the caller can see is shown: a lab manager sees a member's membership of their
    lab, not of another lab.
    """
    ids = [u.id for u in users]
    by_user: dict[str, list[MembershipOut]] = {u.name: [] for u in users}
    for m in await memberships_out(session, user_ids=ids):
        if principal.can_see_account(m.account):
            by_user[m.user].append(m)
    rows = await session.execute(
        select(User.id, Account.path)
        .join(Account, Account.id == User.default_account_id)
        .where(User.id.in_(ids))
    )
    defaults = {user_id: path for user_id, path in rows}
    out = []
    for u in users:
        default = defaults.get(u.id)
        shown = default if default and principal.can_see_account(default) else None
        out.append(UserOut(name=u.name, default_account=shown, memberships=by_user[u.name]))
    return out


@router.get("/users", response_model=Page[UserOut])
async def list_users(
    caller: CallerDep,
    state: StateDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(description="From the previous page.")] = None,
) -> Page[UserOut]:
    """Admins see everyone; managers and viewers the people in their subtrees; others, themselves."""
    p = caller.principal
    async with state.db.read() as session:
        q = select(User).order_by(User.name)
        if not p.is_admin:
            ids = await repo.accounts_within(session, p.oversight_roots())
            q = q.where(
                (User.id == caller.user_id)
                | User.id.in_(select(Membership.user_id).where(Membership.account_id.in_(ids)))
            )
        if cursor is not None:
            q = q.where(User.name > cursor)
        users = list((await session.execute(q.limit(limit + 1))).scalars())
        items = await _users_out(session, users[:limit], p)
    more = len(users) > limit
    return Page[UserOut](items=items, next_cursor=items[-1].name if more else None)


@router.get("/users/{name}", response_model=UserOut)
async def get_user(
    name: Annotated[str, Path(max_length=255)], caller: CallerDep, state: StateDep
) -> UserOut:
    p = caller.principal
    async with state.db.read() as session:
        user = await repo.user_by_name(session, name)
        visible = user is not None and (p.is_admin or user.id == caller.user_id)
        if user is not None and not visible:
            ids = await repo.accounts_within(session, p.oversight_roots())
            visible = bool(
                ids
                and (
                    await session.execute(
                        select(Membership.id).where(
                            Membership.user_id == user.id, Membership.account_id.in_(ids)
                        )
                    )
                ).first()
            )
        if user is None or not visible:
            raise NotFound(f"There is no user '{name}' that you can see.")
        return (await _users_out(session, [user], p))[0]
