"""The Account page: usage over time stacked by user, budget burn-down with the projected
run-out, quota in use per pool, the queue, the leaderboard, and (for managers) the forms."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from allotment.config.models import BudgetSpec, Policy
from allotment.db.tables import Account, BudgetRow, Membership, Pool, User
from allotment.domain.resources import Resources
from allotment.web import reads
from allotment.web.access import can_see_leaderboard, can_view_account, manages
from allotment.web.charts import MOST_USERS, burn_down_chart, stacked_usage_chart
from allotment.web.context import Page, error_page, open_page
from allotment.web.display import MICROS
from allotment.web.pages import window
from allotment.web.paging import PAGE, page_number, slice_of
from allotment.web.periods import BurnDown, burn_down, local_today, period_days

__all__ = ["router"]

router = APIRouter(include_in_schema=False)


@dataclass(frozen=True)
class BudgetView:
    pool: str | None
    amount: int
    period: str
    first: date
    last: date
    burn: BurnDown
    chart: dict[str, Any]
    hard_stop: bool
    origin: str

    @property
    def fraction(self) -> float:
        return self.burn.spent / self.amount if self.amount else 0.0


async def budget_specs(
    session: AsyncSession, policy: Policy, account: Account
) -> list[tuple[str | None, int | None, BudgetSpec, str]]:
    """(pool name, pool id, spec, origin) of the account's own budgets: the budgets table
    (synced from the policy, raised by managers); the policy's where the table has none yet."""
    rows = (
        await session.execute(
            select(Pool.name, BudgetRow.pool_id, BudgetRow.spec, BudgetRow.origin)
            .outerjoin(Pool, Pool.id == BudgetRow.pool_id)
            .where(BudgetRow.account_id == account.id)
        )
    ).all()
    if rows:
        return [(p, pid, BudgetSpec.model_validate(spec), o) for p, pid, spec, o in rows]
    if (await session.execute(select(func.count()).select_from(BudgetRow))).scalar_one():
        return []
    out: list[tuple[str | None, int | None, BudgetSpec, str]] = []
    spec = policy.accounts.get(account.name)
    if spec is not None and spec.budget is not None:
        out.append((None, None, spec.budget, "policy"))
    pools = dict((await session.execute(select(Pool.name, Pool.id))).all())
    for a in policy.allocations:
        if a.account in (account.name, account.path) and a.budget is not None:
            out.append((a.pool, pools.get(a.pool), a.budget, "policy"))
    return out


@router.get("/accounts/{path:path}")
async def account_page(request: Request, path: str) -> Response:
    page = await open_page(request)
    if not isinstance(page, Page):
        return page
    principal = page.caller.principal
    q = request.query_params
    now: datetime = page.state.clock.now()
    today = local_today(now, page.tz)
    days = window(request)
    first = today - timedelta(days=days - 1)
    async with page.state.db.read() as session:
        account = (
            await session.execute(select(Account).where(Account.path == path.strip("/")))
        ).scalar_one_or_none()
        if account is None or not can_view_account(principal, account.path):
            return error_page(
                page.board, 404, "Not found", f"There is no account '{path}' that you can see."
            )
        tree = await reads.accounts(session)
        ids = reads.subtree_ids(tree, account.path)
        by_user = await reads.usage_by_user(session, ids, first, today)
        drawn = by_user[:MOST_USERS]
        by_day = await reads.usage_by_day(session, ids, first, today, [r.user_id for r in drawn])
        others = f"{len(by_user) - len(drawn)} others"
        names = {r.user_id: r.user for r in drawn}
        budgets: list[BudgetView] = []
        for pool, pool_id, spec, origin in await budget_specs(session, page.policy, account):
            b_first, b_last = period_days(spec.period, today)
            amount = round(spec.amount * MICROS)
            spent = await reads.spent_by_day(session, ids, pool_id, b_first, b_last)
            burn = burn_down(amount, spent, b_first, b_last, now, page.tz)
            budgets.append(
                BudgetView(
                    pool,
                    amount,
                    spec.period,
                    b_first,
                    b_last,
                    burn,
                    burn_down_chart(burn, amount, page.currency),
                    spec.hard_stop,
                    origin,
                )
            )
        in_use = await reads.quota_in_use(session, ids)
        qpage = page_number(q.get("qpage"))
        queue = await reads.workloads_page(
            session, account_ids=ids, waiting=True, offset=(qpage - 1) * PAGE
        )
        leaders = (
            by_user
            if can_see_leaderboard(principal, account.path, page.policy.accounting.leaderboard)
            else None
        )
        is_manager = manages(principal, account.path)
        members = (
            await session.execute(
                select(User.name, Membership.role, Membership.origin)
                .join(User, User.id == Membership.user_id)
                .where(Membership.account_id == account.id)
                .order_by(User.name)
            )
        ).all()
    allocations: list[tuple[str, Resources | None, Resources | None, tuple[int, int, int]]] = []
    state = page.view.accounts.get(account.path) if page.view else None
    for pool, alloc in sorted((state.allocations if state else {}).items()):
        used = in_use.get(pool, (0, 0, 0))
        allocations.append((pool, alloc.quota, alloc.borrowing_limit, used))
    for pool, used in sorted(in_use.items()):
        if state is None or pool not in state.allocations:
            allocations.append((pool, None, None, used))
    children = [
        a
        for a in tree
        if a.path.startswith(account.path + "/") and "/" not in a.path[len(account.path) + 1 :]
    ]
    return page.render(
        "account.html",
        account=account,
        days=days,
        windows=(7, 30, 90, 365),
        usage_chart=stacked_usage_chart(
            # Per user only for who may see the leaderboard; others see the account's total.
            (
                (d, names.get(u, others) if leaders is not None else "all members", a)
                for d, u, a in by_day
            ),
            first,
            today,
            page.currency,
        ),
        budgets=budgets,
        allocations=allocations,
        queue=queue[:PAGE],
        qpage=qpage,
        queue_more=len(queue) > PAGE,
        leaders=None if leaders is None else slice_of(leaders, page_number(q.get("lpage"))),
        leaderboard_setting=page.policy.accounting.leaderboard,
        is_manager=is_manager,
        can_change_members=principal.can_change_memberships(account.path),
        members=slice_of(members, page_number(q.get("mpage"))),
        children=slice_of(children, page_number(q.get("cpage"))),
        can_change_child=[c.path for c in children if principal.can_change_account(c.path)],
        # Managers set the budgets of accounts below theirs (within their own); admins any.
        can_set_budget=principal.can_change_account(account.path),
        pools=sorted(page.policy.pools),
    )
