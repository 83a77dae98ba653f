"""The accounts tree and its memberships, and what managers change in them.

Every change writes its audit entry (``db.audit.record``) in the transaction that makes it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from allotment.api.deps import Caller, CallerDep, StateDep
from allotment.api.views import account_out
from allotment.db import repository as repo
from allotment.db.audit import record
from allotment.db.tables import Account, Membership, Pool, User
from allotment.domain.accounts import is_within
from allotment.domain.slurm import slurm_account
from allotment.errors import Conflict, Forbidden, InvalidRequest, NotFound
from allotment.schemas import (
    AccountArchived,
    AccountCreate,
    AccountOut,
    AccountPatch,
    MembershipIn,
    MembershipOut,
    Page,
)

__all__ = ["memberships_out", "router"]

router = APIRouter(tags=["accounts"])

#: Longest account path the database holds.
MAX_PATH = 1024
#: A hub user's name; the database holds up to 255 characters.
UserName = Annotated[str, Path(min_length=1, max_length=255)]
Parent = aliased(Account)


async def memberships_out(
    session: AsyncSession,
    *,
    user_id: int | None = None,
    account_id: int | None = None,
    user_ids: list[int] | None = None,
    role: str | None = None,
    after_user: str | None = None,
    limit: int | None = None,
) -> list[MembershipOut]:
    q = (
        select(User.name, Account.path, Membership.role, Membership.origin)
        .join(User, User.id == Membership.user_id)
        .join(Account, Account.id == Membership.account_id)
        .order_by(Account.path, User.name)
    )
    if user_id is not None:
        q = q.where(Membership.user_id == user_id)
    if account_id is not None:
        q = q.where(Membership.account_id == account_id)
    if user_ids is not None:
        q = q.where(Membership.user_id.in_(user_ids))
    if role is not None:
        q = q.where(Membership.role == role)
    if after_user is not None:
        q = q.where(User.name > after_user)
    if limit is not None:
        q = q.limit(limit)
    return [
        MembershipOut(user=u, account=a, role=r, origin=o)
        for u, a, r, o in await session.execute(q)
    ]


async def _visible(session: AsyncSession, caller: Caller, path: str) -> Account:
    account = await repo.account_by_ref(session, path)
    if account is None or not caller.principal.can_see_account(account.path):
        raise NotFound(f"There is no account '{path}' that you can see.")
    return account


@router.get("/accounts", response_model=Page[AccountOut])
async def list_accounts(
    caller: CallerDep,
    state: StateDep,
    under: Annotated[str | None, Query(description="Only this account's subtree.")] = None,
    archived: Annotated[bool, Query(description="Include archived accounts.")] = False,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    cursor: Annotated[str | None, Query(description="From the previous page.")] = None,
) -> Page[AccountOut]:
    """The accounts you can see, in tree order (by path)."""
    q = select(Account, Parent.path).outerjoin(Parent, Parent.id == Account.parent_id)
    if not archived:
        q = q.where(Account.archived_at.is_(None))
    if under is not None:
        q = q.where((Account.path == under) | Account.path.startswith(under + "/", autoescape=True))
    if cursor is not None:
        q = q.where(Account.path > cursor)
    p = caller.principal
    out: list[AccountOut] = []
    async with state.db.read() as session:
        # Filtering by visibility in Python keeps the rule in one place; the tree is small
        # next to the workloads, and a page is bounded by `limit`.
        result = await session.stream(q.order_by(Account.path))
        more = False
        async for account, parent in result:
            if not p.can_see_account(account.path):
                continue
            if len(out) == limit:
                more = True
                break
            out.append(account_out(account, parent))
        await result.close()
    return Page[AccountOut](items=out, next_cursor=out[-1].path if more else None)


@router.get("/accounts/{path:path}/members", response_model=Page[MembershipOut])
async def list_members(
    path: str,
    caller: CallerDep,
    state: StateDep,
    role: Annotated[str | None, Query(pattern="^(member|manager|viewer)$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
    cursor: Annotated[str | None, Query(description="From the previous page.")] = None,
) -> Page[MembershipOut]:
    """The account's members (by user name), to people in the account or above it."""
    async with state.db.read() as session:
        account = await _visible(session, caller, path)
        p = caller.principal
        if not p.is_admin and not any(is_within(account.path, m.account) for m in p.memberships):
            raise Forbidden(f"Only people in '{account.path}' or above it may see its members.")
        rows = await memberships_out(
            session, account_id=account.id, role=role, after_user=cursor, limit=limit + 1
        )
    items = rows[:limit]
    return Page[MembershipOut](
        items=items, next_cursor=items[-1].user if len(rows) > limit else None
    )


@router.put("/accounts/{path:path}/members/{user}", response_model=MembershipOut)
async def put_member(
    path: str, user: UserName, body: MembershipIn, caller: CallerDep, state: StateDep
) -> MembershipOut:
    """Add a user to an account, or change their role (managers of the account or above)."""
    async with state.db.write() as session:
        account = await _visible(session, caller, path)
        if not caller.principal.can_change_memberships(account.path):
            raise Forbidden(
                f"Only a manager of '{account.path}' (or above) may change its members."
            )
        target = await repo.ensure_user(session, user, state.clock.now())
        row = (
            await session.execute(
                select(Membership).where(
                    Membership.user_id == target.id, Membership.account_id == account.id
                )
            )
        ).scalar_one_or_none()
        before = None if row is None else {"role": row.role}
        if row is None:
            row = Membership(user_id=target.id, account_id=account.id, role=body.role, origin="api")
            session.add(row)
        elif row.origin == "policy" and row.role != body.role:
            raise Conflict(
                f"{user}'s role in '{account.path}' is set by the policy file; change it there."
            )
        else:
            row.role = body.role
        if before != {"role": body.role}:
            record(
                session,
                actor=caller.name,
                action="member.add" if before is None else "member.role",
                target=f"{user} in {account.path}",
                now=state.clock.now(),
                account_path=account.path,
                before=before,
                after={"role": body.role},
            )
    state.changed()
    return MembershipOut(user=user, account=account.path, role=body.role, origin=row.origin)


@router.delete("/accounts/{path:path}/members/{user}", status_code=204)
async def delete_member(path: str, user: UserName, caller: CallerDep, state: StateDep) -> None:
    async with state.db.write() as session:
        account = await _visible(session, caller, path)
        if not caller.principal.can_change_memberships(account.path):
            raise Forbidden(
                f"Only a manager of '{account.path}' (or above) may change its members."
            )
        row = (
            await session.execute(
                select(Membership)
                .join(User, User.id == Membership.user_id)
                .where(User.name == user, Membership.account_id == account.id)
            )
        ).scalar_one_or_none()
        if row is None:
            raise NotFound(f"{user} is not a member of '{account.path}'.")
        if row.origin == "policy":
            raise Conflict(
                f"{user}'s membership of '{account.path}' is set by the policy file; "
                "remove it there."
            )
        record(
            session,
            actor=caller.name,
            action="member.remove",
            target=f"{user} in {account.path}",
            now=state.clock.now(),
            account_path=account.path,
            before={"role": row.role},
        )
        await session.delete(row)
    state.changed()


@router.get("/accounts/{path:path}", response_model=AccountOut)
async def get_account(path: str, caller: CallerDep, state: StateDep) -> AccountOut:
    async with state.db.read() as session:
        account = await _visible(session, caller, path)
        parent = await session.get(Account, account.parent_id) if account.parent_id else None
        return account_out(account, parent.path if parent else None)


@router.patch("/accounts/{path:path}", response_model=AccountOut)
async def patch_account(
    path: str, body: AccountPatch, caller: CallerDep, state: StateDep
) -> AccountOut:
    """Change an account's shares or description (managers of an account above it)."""
    async with state.db.write() as session:
        account = await _visible(session, caller, path)
        if not caller.principal.can_change_account(account.path):
            raise Forbidden(
                f"Only a manager of an account above '{account.path}' may change its settings."
            )
        before: dict[str, object] = {}
        after: dict[str, object] = {}
        if body.shares is not None and body.shares != account.shares:
            before["shares"], after["shares"] = account.shares, body.shares
            account.shares = body.shares
        if body.description is not None and body.description != account.description:
            before["description"], after["description"] = account.description, body.description
            account.description = body.description
        if after:
            record(
                session,
                actor=caller.name,
                action="account.update",
                target=f"{account.path} {', '.join(after)}",
                now=state.clock.now(),
                account_path=account.path,
                before=before,
                after=after,
            )
        parent = await session.get(Account, account.parent_id) if account.parent_id else None
        out = account_out(account, parent.path if parent else None)
    state.changed()
    return out


async def _check_slurm_name(session: AsyncSession, path: str) -> None:
    """Where Slurm pools exist, accounts are mirrored under flat names (``physics/lab-a`` is
    ``physics.lab-a``): a new path may not take the Slurm name of another account (the
    policy file's check says the same of the file's accounts)."""
    pools = (await session.execute(select(Pool.backend).where(Pool.archived_at.is_(None)))).all()
    if not any(backend == "slurm" for (backend,) in pools):
        return
    mine = slurm_account(path)
    for (other,) in await session.execute(select(Account.path)):
        if other != path and slurm_account(other) == mine:
            raise Conflict(
                f"'{path}' would be mirrored into Slurm as account '{mine}', which "
                f"'{other}' already is (a path's '/' becomes '.'); choose a name without that "
                "clash."
            )


@router.post("/accounts", response_model=AccountOut, status_code=201)
async def create_account(body: AccountCreate, caller: CallerDep, state: StateDep) -> AccountOut:
    """Create a sub-account (managers of the parent or above; roots: administrators).

    It is a full account (members charge it, the scheduler shares it) that the policy file does
    not state: applying the file leaves it alone until the file itself names it. Asked for
    again where it was, an archived one is restored.
    """
    p = caller.principal
    now = state.clock.now()
    async with state.db.write() as session:
        parent = None
        if body.parent is not None:
            parent = await _visible(session, caller, body.parent)
            if parent.archived_at is not None:
                raise Conflict(f"Account '{parent.path}' is archived; create under another.")
        if not p.can_create_account(parent.path if parent else None):
            raise Forbidden(
                f"Only a manager of '{parent.path}' (or above) may create accounts in it."
                if parent
                else "Only administrators create top-level accounts; name a `parent`."
            )
        path = f"{parent.path}/{body.name}" if parent else body.name
        if len(path) > MAX_PATH:
            raise InvalidRequest(f"The path would be {len(path)} characters; at most {MAX_PATH}.")
        await _check_slurm_name(session, path)
        taken = await repo.account_by_ref(session, body.name)
        if taken is not None and _restorable(taken, parent):
            out = _restore(session, taken, body, parent, caller.name, now)
            state.changed()
            return out
        if taken is not None:
            where = f" ({taken.path})" if p.can_see_account(taken.path) else ""
            raise Conflict(
                f"There is already an account named '{body.name}'{where}; names are unique in "
                "the whole tree. Choose another."
            )
        row = Account(
            name=body.name,
            path=path,
            parent_id=parent.id if parent else None,
            shares=body.shares,
            description=body.description,
            created_at=now,
            origin="api",
        )
        session.add(row)
        record(
            session,
            actor=caller.name,
            action="account.create",
            target=path,
            now=now,
            account_path=path,
            after={"shares": body.shares, "description": body.description},
        )
        await session.flush()
        out = account_out(row, parent.path if parent else None)
    state.changed()
    return out


def _restorable(taken: Account, parent: Account | None) -> bool:
    """An archived account managers created, asked for again under the same parent."""
    same_parent = taken.parent_id == (parent.id if parent else None)
    return taken.archived_at is not None and taken.origin == "api" and same_parent


def _restore(
    session: AsyncSession,
    row: Account,
    body: AccountCreate,
    parent: Account | None,
    actor: str,
    now: datetime,
) -> AccountOut:
    """Bring an archived sub-account back (its history and members with it), with the
    settings asked for: the way back for one archived by a manager or with its parent."""
    before = {"archived": True, "shares": row.shares, "description": row.description}
    row.archived_at = None
    row.shares, row.description = body.shares, body.description
    record(
        session,
        actor=actor,
        action="account.restore",
        target=row.path,
        now=now,
        account_path=row.path,
        before=before,
        after={"archived": False, "shares": body.shares, "description": body.description},
    )
    return account_out(row, parent.path if parent else None)


@router.delete("/accounts/{path:path}", response_model=AccountArchived)
async def archive_account(path: str, caller: CallerDep, state: StateDep) -> AccountArchived:
    """Archive a sub-account a manager created (managers of an account above it).

    Accounts the policy file states are the file's to remove. An account history refers to
    (workloads, charges, budgets) is archived: hidden and closed to new work, its records kept;
    one nothing refers to is removed.
    """
    now = state.clock.now()
    async with state.db.write() as session:
        account = await _visible(session, caller, path)
        if not caller.principal.can_archive_account(account.path):
            raise Forbidden(f"Only a manager of an account above '{account.path}' may archive it.")
        if account.origin == "policy":
            raise Conflict(
                f"Account '{account.path}' is stated by the policy file; remove it there "
                "(`allot config apply`)."
            )
        if account.archived_at is not None:
            raise Conflict(f"Account '{account.path}' is already archived.")
        children = await repo.account_children(session, account.id)
        live = [c.path for c in children if c.archived_at is None]
        if live:
            raise Conflict(
                f"Account '{account.path}' has sub-accounts: {', '.join(live)}. Archive them first."
            )
        unfinished = await repo.unfinished_workloads(session, account.id)
        if unfinished:
            raise Conflict(
                f"{unfinished} workload(s) charged to '{account.path}' are waiting or running; "
                "cancel them or let them end first."
            )
        keep = bool(children) or await repo.account_referenced(session, account.id)
        before = {"shares": account.shares, "description": account.description}
        if keep:
            account.archived_at = now
        else:
            await session.execute(delete(Membership).where(Membership.account_id == account.id))
            await session.execute(
                update(User)
                .where(User.default_account_id == account.id)
                .values(default_account_id=None)
            )
            await session.delete(account)
        outcome = "archived" if keep else "removed"
        record(
            session,
            actor=caller.name,
            action=f"account.{'archive' if keep else 'remove'}",
            target=account.path,
            now=now,
            account_path=account.path,
            before=before,
        )
    state.changed()
    return AccountArchived(path=account.path, outcome=outcome)
