"""Usage reports: what was spent and used, by user, account, profile, pool, day or week.

Who sees what: everyone their own usage, in any account; managers and viewers their
subtree's, per user too; members their accounts' totals, and per user only where the
policy's ``accounting.leaderboard`` is ``members``; administrators everything. An account
the caller cannot see is answered 404, as by the accounts routes.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query
from sqlalchemy.ext.asyncio import AsyncSession

from allotment.api.deps import Caller, CallerDep, StateDep
from allotment.controller.view import load_policy_view
from allotment.db import repository as repo
from allotment.db.reports import Selection, usage_report
from allotment.db.tables import Account
from allotment.domain.accounts import Role, is_within
from allotment.domain.permissions import Scope
from allotment.domain.reports import (
    Days,
    Grouping,
    Totals,
    default_days,
    efficiency,
    period_days,
    since_days,
)
from allotment.errors import Forbidden, InvalidRequest, NotFound
from allotment.schemas import UsageReportOut, UsageRowOut

__all__ = ["router"]

router = APIRouter(tags=["usage"])

MICROS = 1_000_000
HOUR = 3600.0


def row_out(key: str, t: Totals) -> UsageRowOut:
    return UsageRowOut(
        key=key,
        cost=t.amount / MICROS,
        cost_micros=t.amount,
        cpu_hours=t.cpu_seconds / HOUR,
        memory_gib_hours=t.memory_gib_seconds / HOUR,
        gpu_hours=t.gpu_seconds / HOUR,
        used_cpu_hours=t.used_cpu_seconds / HOUR,
        efficiency=efficiency(t.used_cpu_seconds, t.cpu_seconds),
    )


def _days(since: str | None, period: str | None, today: date) -> Days:
    if since is not None and period is not None:
        raise InvalidRequest("Give `since` or `period`, not both.")
    try:
        if period is not None:
            return period_days(period)
        return since_days(since, today) if since is not None else default_days(today)
    except ValueError as e:
        raise InvalidRequest(str(e)[:1].upper() + str(e)[1:] + ".") from None


def _roots(caller: Caller, *roles: Role) -> list[str]:
    return sorted({m.account for m in caller.principal.memberships if m.role in roles})


@router.get("/usage", response_model=UsageReportOut)
async def usage(
    caller: CallerDep,
    state: StateDep,
    account: Annotated[
        str | None,
        Query(max_length=1024, description="Only this account (name or path) and its subtree."),
    ] = None,
    user: Annotated[
        str | None, Query(max_length=255, description="Only this user's usage.")
    ] = None,
    since: Annotated[
        str | None,
        Query(
            max_length=32,
            description="`30d` (today and the 29 days before) or a first day, `2026-11-01`.",
        ),
    ] = None,
    period: Annotated[
        str | None,
        Query(max_length=32, description="`2026` (a year), `2026-Q4`, `2026-12` or `2026-12-02`."),
    ] = None,
    by: Annotated[Grouping, Query(description="What the rows are.")] = "account",
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    cursor: Annotated[
        str | None, Query(max_length=1024, description="From the previous page.")
    ] = None,
) -> UsageReportOut:
    """Usage over whole days in the site's time zone (`accounting.time_zone`), the last 30
    days unless `since` or `period` says otherwise, grouped `by` a dimension, with the total
    of every row (not only this page's)."""
    p = caller.principal
    if not p.has(Scope.READ):
        raise Forbidden("This token may not read usage (it lacks custom:allotment:read).")
    async with state.db.read() as session:
        view = await session.run_sync(load_policy_view, state.policy_views)
        accounting = view.policy.accounting if view is not None else None
        zone = accounting.time_zone if accounting is not None else "UTC"
        currency = view.policy.currency if view is not None else "credits"
        days = _days(since, period, state.clock.now().astimezone(ZoneInfo(zone)).date())
        target = None
        if account is not None:
            target = await repo.account_by_ref(session, account)
            if target is None or not p.can_see_account(target.path):
                raise NotFound(f"There is no account '{account}' that you can see.")
        users = None
        if user is not None:
            row = await repo.user_by_name(session, user)
            users = [row.id] if row is not None else []  # unknown: an empty report
        selection = Selection(
            days=days,
            accounts=None if target is None else await repo.accounts_within(session, [target.path]),
            users=users,
        )
        if not p.is_admin:
            board = accounting is None or accounting.leaderboard == "members"
            selection = await _visible(session, selection, caller, target, user, by, board)
        rows = await usage_report(session, selection, by)
    total = Totals()
    for _, t in rows:
        total = total + t
    after = [r for r in rows if cursor is None or r[0] > cursor]
    page = after[:limit]
    return UsageReportOut(
        by=by,
        currency=currency,
        time_zone=zone,
        first_day=days.first,
        last_day=days.last,
        account=target.path if target is not None else None,
        user=user,
        items=[row_out(k, t) for k, t in page],
        total=row_out("total", total),
        next_cursor=page[-1][0] if len(after) > limit else None,
    )


async def _visible(
    session: AsyncSession,
    selection: Selection,
    caller: Caller,
    target: Account | None,
    user: str | None,
    by: Grouping,
    board: bool,
) -> Selection:
    """``selection`` cut to what a caller who is not an administrator may see (the module's
    rules); ``board``: the policy shows members their accounts' leaderboard."""
    if user == caller.name or (target is None and user is None):
        # Their own usage, wherever it was charged.
        return replace(selection, users=[caller.user_id])
    per_user = user is not None or by == "user"
    overseen = _roots(caller, Role.MANAGER, Role.VIEWER)
    members = _roots(caller, Role.MEMBER)
    roots = overseen + (members if board or not per_user else [])
    if target is not None and not any(is_within(target.path, r) for r in roots):
        raise Forbidden(_refusal(target.path, per_user, overseen, members))
    return replace(selection, visible_accounts=await repo.accounts_within(session, roots))


def _refusal(path: str, per_user: bool, overseen: list[str], members: list[str]) -> str:
    """Why a caller who can see ``path`` may not see its usage, and what they may see."""
    if per_user and any(is_within(path, r) for r in members):
        return (
            f"Per-user usage of '{path}' is shown to its managers and viewers only (the "
            "policy's accounting.leaderboard says so); ask without `user` and `by=user` for "
            "its totals, or with your own name for yours."
        )
    mine = ", ".join(f"'{r}'" for r in sorted(set(overseen + members))) or "no account"
    return (
        f"'{path}' holds accounts that are not yours: you may see the usage of {mine} (and "
        "what is below), and your own anywhere."
    )
