"""The policy in force, and applying a new one (admins only)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy import select

from allotment.api.deps import CallerDep, StateDep
from allotment.config import parse_policy
from allotment.db.policy_sync import apply_policy, identity_warnings
from allotment.db.tables import PolicyVersion
from allotment.errors import ConfigError, Forbidden, InvalidRequest, NotFound
from allotment.schemas import ApplyResult, PolicyIn

__all__ = ["router"]

router = APIRouter(tags=["policy"])


class _DryRun(Exception):
    """Raised inside the write session to roll a dry run back."""


@router.get("/policy")
async def get_policy(caller: CallerDep, state: StateDep) -> dict[str, Any]:
    """The newest applied policy (without `service`, which is the host's business)."""
    if not caller.principal.is_admin:
        raise Forbidden("Only administrators may read the whole policy.")
    async with state.db.read() as session:
        latest = (
            await session.execute(select(PolicyVersion).order_by(PolicyVersion.id.desc()).limit(1))
        ).scalar_one_or_none()
    if latest is None:
        raise NotFound("No policy has been applied yet; run `allot config apply FILE`.")
    return {"version": latest.id, "applied_at": latest.applied_at, "document": latest.document}


@router.put("/policy", response_model=ApplyResult)
async def put_policy(body: PolicyIn, caller: CallerDep, state: StateDep) -> ApplyResult:
    """Check a policy and make the database match it; never deletes history."""
    if not caller.principal.is_admin:
        raise Forbidden("Only administrators may apply a policy.")
    try:
        policy = parse_policy(body.text, body.filename, environ={})
    except ConfigError as e:
        raise InvalidRequest("The policy has problems:\n" + str(e)) from None
    changes: list[str] = []
    warnings: list[str] = []
    try:
        async with state.db.write() as session:
            version, changes = await apply_policy(
                session, policy, actor=caller.name, now=state.clock.now()
            )
            warnings = await identity_warnings(session, policy)
            if body.dry_run:
                raise _DryRun
    except _DryRun:
        return ApplyResult(version=None, changes=changes, warnings=warnings)
    state.changed()
    return ApplyResult(version=version, changes=changes, warnings=warnings)
