"""Budgets: the ones you can see with what they spent, and a manager's budget for an account
below theirs ("within what their own account has"); administrators set any."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from allotment.api.deps import Caller, CallerDep, StateDep
from allotment.config.models import BudgetSpec, Policy
from allotment.controller.view import load_policy_view
from allotment.db import repository as repo
from allotment.db.budgets import budgets_in_force, set_budget
from allotment.db.tables import Pool, Profile
from allotment.domain.accounts import Role, ancestors, is_within
from allotment.domain.budgets import MICROS, BudgetStatus, money, period_label
from allotment.errors import Conflict, Forbidden, InvalidRequest, NotFound
from allotment.schemas import BudgetIn, BudgetOut, Page

__all__ = ["budget_out", "router"]

router = APIRouter(tags=["budgets"])


def budget_out(b: BudgetStatus) -> BudgetOut:
    return BudgetOut(
        account=b.account,
        pool=b.pool,
        currency=b.currency,
        period=b.period.period,
        period_start=b.period.start,
        period_end=b.period.end,
        amount=b.amount / MICROS,
        spent=b.spent / MICROS,
        left=b.left / MICROS,
        fraction=round(b.fraction, 6),
        hard_stop=b.hard_stop,
        grace=b.grace,
        step_down=b.step_down,
        overdraft=b.overdraft / MICROS,
        alerts=list(b.alerts),
        origin="api" if b.origin == "api" else "policy",
        blocked=b.blocked,
        reason=b.hold_reason if b.blocked else None,
    )


async def _policy(session: AsyncSession, state: StateDep) -> Policy:
    view = await session.run_sync(load_policy_view, state.policy_views)
    if view is None:
        raise NotFound("No policy has been applied yet, so there are no budgets.")
    return view.policy


@router.get("/budgets", response_model=Page[BudgetOut])
async def list_budgets(
    caller: CallerDep,
    state: StateDep,
    account: Annotated[
        str | None, Query(description="Only budgets over this account (its own and above).")
    ] = None,
) -> Page[BudgetOut]:
    """The budgets you can see (those of your accounts, above and below them), with what
    each has spent in its current period: all on one page (a site has few)."""
    now = state.clock.now()
    async with state.db.read() as session:
        policy = await _policy(session, state)
        found = await budgets_in_force(session, policy, now)
        path = None
        if account is not None:
            row = await repo.account_by_ref(session, account)
            if row is None or not caller.principal.can_see_account(row.path):
                raise NotFound(f"There is no account '{account}' that you can see.")
            path = row.path
    items = [
        budget_out(b)
        for b in found
        if caller.principal.can_see_account(b.account)
        and (path is None or is_within(path, b.account) or is_within(b.account, path))
    ]
    return Page[BudgetOut](items=items)


def _own_roots(caller: Caller, path: str) -> list[str]:
    """The accounts above ``path`` that the caller manages, nearest first."""
    managed = {m.account for m in caller.principal.memberships if m.role is Role.MANAGER}
    return [a for a in reversed(ancestors(path)) if a in managed]


#: Average days of each calendar period, to compare budgets of different periods.
_DAYS = {"day": 1.0, "week": 7.0, "month": 30.44, "quarter": 91.31, "year": 365.25}


def _days(period: str) -> float:
    return _DAYS.get(period) or float(period.removesuffix("d"))


def _within_own(
    caller: Caller, path: str, pool: str | None, spec: BudgetSpec, budgets: list[BudgetStatus]
) -> None:
    """A manager gives an account below theirs no more than their own account has: not
    beyond the amount of, nor what is left of, any budget over the account they manage that
    covers the same pool (a budget across pools covers every pool). A budget of another period
    is compared per day: a lab with 1,000 a month cannot give a project 1,000,000 a year."""
    roots = _own_roots(caller, path)
    amount = round((spec.amount + spec.overdraft) * MICROS)
    for b in budgets:
        if b.pool is not None and b.pool != pool:
            continue
        if not any(is_within(root, b.account) for root in roots):
            continue
        most = min(b.amount, max(b.left, 0))
        if b.period.period != spec.period:
            most = round(b.amount * _days(spec.period) / _days(b.period.period))
        if amount > most:
            raise Forbidden(
                f"You may give {path} at most {money(most, b.currency)} per {spec.period} "
                f"(overdraft included): {b.account}'s budget has "
                f"{money(max(b.left, 0), b.currency)} of its {money(b.amount, b.currency)} "
                f"left {period_label(b.period)}. Ask a manager above {b.account} (or an "
                "administrator) to raise that first."
            )


async def _check_step_down(session: AsyncSession, spec: BudgetSpec, pool: Pool | None) -> None:
    if spec.step_down is None:
        return
    profile = (
        await session.execute(
            select(Profile).where(Profile.name == spec.step_down, Profile.archived_at.is_(None))
        )
    ).scalar_one_or_none()
    if profile is None:
        raise InvalidRequest(f"step_down names profile '{spec.step_down}', which does not exist.")
    if pool is not None and profile.pool_id != pool.id:
        raise InvalidRequest(
            f"step_down profile '{spec.step_down}' runs on another pool than '{pool.name}'; "
            "work can only step down within its pool."
        )


@router.put("/accounts/{path:path}/budget", response_model=BudgetOut)
async def put_budget(
    path: str,
    body: BudgetIn,
    caller: CallerDep,
    state: StateDep,
    pool: Annotated[str | None, Query(description="Limit one pool. Default: all pools.")] = None,
) -> BudgetOut:
    """Set the budget of an account (on one pool, or across all pools). Managers set the
    budgets of accounts below one they manage, within what their own account has;
    administrators any. A budget set here survives `allot config apply` until the policy
    file changes that budget's amount. Held work it releases starts at the next cycle."""
    try:
        spec = BudgetSpec.model_validate(body.model_dump(exclude_none=True))
    except ValidationError as e:
        first = e.errors()[0]
        raise InvalidRequest(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    now = state.clock.now()
    async with state.db.write() as session:
        account = await repo.account_by_ref(session, path)
        if account is None or not caller.principal.can_see_account(account.path):
            raise NotFound(f"There is no account '{path}' that you can see.")
        if not caller.principal.can_change_account(account.path):
            raise Forbidden(
                f"Only a manager of an account above {account.path} (or an administrator) may "
                "set its budget."
            )
        if account.archived_at is not None:
            raise Conflict(f"{account.path} is archived: it can have no budget.")
        pool_row = None
        if pool is not None:
            pool_row = (
                await session.execute(
                    select(Pool).where(Pool.name == pool, Pool.archived_at.is_(None))
                )
            ).scalar_one_or_none()
            if pool_row is None:
                raise NotFound(f"There is no pool '{pool}'.")
        await _check_step_down(session, spec, pool_row)
        policy = await _policy(session, state)
        if not caller.principal.is_admin:
            _within_own(
                caller, account.path, pool, spec, await budgets_in_force(session, policy, now)
            )
        await set_budget(
            session, account=account, pool=pool_row, spec=spec, actor=caller.name, now=now
        )
        found = await budgets_in_force(session, policy, now)
    state.workloads_changed()
    if state.controller is not None:
        state.controller.scheduling.budgets_changed()
    (mine,) = [b for b in found if b.account == account.path and b.pool == pool]
    return budget_out(mine)
