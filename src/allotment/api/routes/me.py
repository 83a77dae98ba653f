"""Who am I, as Allotment sees me."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from allotment.api.deps import CallerDep, StateDep
from allotment.api.routes.accounts import memberships_out
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
        memberships = await memberships_out(session, user_id=caller.user_id)
    return Me(
        name=caller.name,
        scopes=sorted(caller.principal.scopes),
        admin=caller.principal.is_admin,
        memberships=memberships,
        default_account=default,
    )
