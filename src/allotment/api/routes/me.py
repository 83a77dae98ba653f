"""Who am I, as Allotment sees me."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from allotment.api.deps import CallerDep, StateDep
from allotment.api.routes.accounts import memberships_out
from allotment.db import repository as repo
from allotment.db.tables import Account, User
from allotment.schemas import Me

__all__ = ["router"]

router = APIRouter(tags=["users"])


@router.get("/me", response_model=Me)
async def me(caller: CallerDep, state: StateDep) -> Me:
    async with state.db.read() as session:
        default = (
            await session.execute(
                select(Account.path)
                .join(User, User.default_account_id == Account.id)
                .where(User.id == caller.user_id)
            )
        ).scalar_one_or_none()
        # A policy's `members: ["*"]` makes everyone a member: those count too, as user "*".
        everyone = await repo.user_by_name(session, repo.EVERYONE)
        ids = [caller.user_id] + ([everyone.id] if everyone is not None else [])
        memberships = await memberships_out(session, user_ids=ids)
    return Me(
        name=caller.name,
        scopes=sorted(caller.principal.scopes),
        admin=caller.principal.is_admin,
        memberships=memberships,
        default_account=default,
    )
