"""The audit log: who changed which account, membership, share or budget, and when.

Managers read the entries of the subtrees they manage, administrators every entry (the
site-wide ones of ``allot config apply`` too). Members and viewers read none: they see the
accounts and workloads, not who administers them how.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import ColumnElement, or_, select

from allotment.api.deps import CallerDep, StateDep
from allotment.db import repository as repo
from allotment.db.tables import AuditEntry
from allotment.errors import Forbidden, InvalidRequest, NotFound
from allotment.schemas import MAX_ID, AuditOut, Page

__all__ = ["router"]

router = APIRouter(tags=["audit"])


def _within(roots: list[str]) -> ColumnElement[bool]:
    return or_(
        *(
            or_(
                AuditEntry.account_path == r,
                AuditEntry.account_path.startswith(r + "/", autoescape=True),
            )
            for r in roots
        )
    )


@router.get("/audit", response_model=Page[AuditOut])
async def list_audit(
    caller: CallerDep,
    state: StateDep,
    account: Annotated[
        str | None,
        Query(description="Account path or name: its entries and its subtree's.", max_length=1024),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: Annotated[
        str | None, Query(description="From the previous page's `next_cursor`.")
    ] = None,
) -> Page[AuditOut]:
    """Changes, newest first: to ``account``'s subtree, else to every subtree you manage."""
    p = caller.principal
    before_id = None
    if cursor is not None:
        if not (cursor.isascii() and cursor.isdigit() and int(cursor) <= MAX_ID):
            raise InvalidRequest("`cursor` is not one this API gave out; start without it.")
        before_id = int(cursor)
    q = select(AuditEntry)
    async with state.db.read() as session:
        if account is not None:
            row = await repo.account_by_ref(session, account)
            if row is None and p.is_admin:
                path = account  # an account removed since: its entries remain
            elif row is None or not p.can_see_account(row.path):
                raise NotFound(f"There is no account '{account}' that you can see.")
            else:
                path = row.path
            if not p.can_read_audit(path):
                raise Forbidden(
                    f"Only managers of '{path}' (or above) and administrators may read its "
                    "audit log."
                )
            q = q.where(_within([path]))
        elif not p.is_admin:
            roots = p.audit_roots()
            if not roots:
                raise Forbidden(
                    "Only account managers and administrators may read the audit log, and "
                    "you manage no account."
                )
            q = q.where(_within(roots))
        if before_id is not None:
            q = q.where(AuditEntry.id < before_id)
        rows = list(
            (await session.execute(q.order_by(AuditEntry.id.desc()).limit(limit + 1))).scalars()
        )
    items = [
        AuditOut(
            id=e.id,
            at=e.at,
            actor=e.actor,
            action=e.action,
            account=e.account_path,
            target=e.target,
            before=e.before,
            after=e.after,
        )
        for e in rows[:limit]
    ]
    return Page[AuditOut](items=items, next_cursor=str(items[-1].id) if len(rows) > limit else None)
