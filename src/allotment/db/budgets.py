"""Budgets in the database: synced from the policy, set by managers, and read with what was
spent in their period.

A budget from the file (origin ``policy``) follows the file. One a manager set through the API
(origin ``api``) survives an apply until the file itself changes that budget's amount
(``file_amount`` holds what the file said at the last apply), as shares do. Spending is the
ledger's daily totals (``usage_days``) of the account's whole subtree, on the budget's pool or
on all pools, for the days of its period: one grouped query for all budgets, never a scan of
workloads. Readers take a synchronous session (the controller's hand-over) or an async one.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import case, delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from allotment.config.models import BudgetSpec, Policy
from allotment.config.resolve import resolve_account
from allotment.db import audit
from allotment.db.tables import Account, BudgetAlert, BudgetRow, Membership, Pool, UsageDay, User
from allotment.domain.accounts import ancestors
from allotment.domain.budgets import MICROS, BudgetStatus, Period, period_bounds

log = logging.getLogger("allotment.budgets")

__all__ = [
    "budget_target",
    "budgets_in_force",
    "load_budgets",
    "managers_by_account",
    "set_budget",
    "sync_budgets",
]


def budget_target(path: str, pool: str | None) -> str:
    """How the audit log and ``changes`` name a budget."""
    return f"{path} budget" + (f" on {pool}" if pool else "")


def _doc(spec: BudgetSpec) -> dict[str, Any]:
    doc: dict[str, Any] = spec.model_dump(mode="json")
    return doc


async def sync_budgets(
    session: AsyncSession,
    policy: Policy,
    accounts: Mapping[str, Account],
    pools: Mapping[str, Pool],
    *,
    actor: str,
    now: datetime,
    changes: list[str],
) -> None:
    """Make the ``budgets`` table follow ``policy`` (``accounts`` and ``pools`` by name, as
    the apply just synced them), recording each change in ``changes`` and the audit log."""
    wanted: dict[tuple[int, int | None], tuple[BudgetSpec, str, str | None]] = {}
    for name, aspec in policy.accounts.items():
        if aspec.budget is not None and name in accounts:
            a = accounts[name]
            wanted[(a.id, None)] = (aspec.budget, a.path, None)
    for alloc in policy.allocations:
        ref = resolve_account(policy, alloc.account)
        if alloc.budget is None or ref is None or ref not in accounts or alloc.pool not in pools:
            continue
        a = accounts[ref]
        wanted[(a.id, pools[alloc.pool].id)] = (alloc.budget, a.path, alloc.pool)
    rows = (
        await session.execute(
            select(BudgetRow, Account.path, Pool.name)
            .join(Account, Account.id == BudgetRow.account_id)
            .outerjoin(Pool, Pool.id == BudgetRow.pool_id)
        )
    ).all()
    existing = {(r.account_id, r.pool_id): (r, path, pool) for r, path, pool in rows}

    def log(action: str, target: str, path: str, before: Any, after: Any) -> None:
        audit.record(
            session,
            actor=actor,
            action=action,
            target=target,
            now=now,
            account_path=path,
            before=before,
            after=after,
        )

    for key, (spec, path, pool) in wanted.items():
        doc, amount = _doc(spec), float(spec.amount)
        target = budget_target(path, pool)
        found = existing.get(key)
        if found is None:
            session.add(
                BudgetRow(
                    account_id=key[0],
                    pool_id=key[1],
                    spec=doc,
                    origin="policy",
                    file_amount=amount,
                    updated_at=now,
                    updated_by=actor,
                )
            )
            changes.append(f"+ {target}: {spec.amount:g} per {spec.period}")
            log("budget.set", target, path, None, doc)
            continue
        row = found[0]
        # A manager's budget stands until the file changes the amount it states.
        file_wins = row.origin == "policy" or row.file_amount != amount
        row.file_amount = amount
        if file_wins and (row.spec != doc or row.origin != "policy"):
            changes.append(f"~ {target}: {float(row.spec.get('amount', 0)):g} → {spec.amount:g}")
            log("budget.set", target, path, row.spec, doc)
            if _money(row.spec) != _money(doc):
                await _forget_alerts(session, row.id)
            row.spec, row.origin, row.updated_at, row.updated_by = doc, "policy", now, actor
    for key, (row, path, pool) in existing.items():
        if key in wanted:
            continue
        if row.origin == "api" and row.file_amount is None:
            continue  # a manager's budget the file never stated
        target = budget_target(path, pool or None)
        changes.append(f"- {target}")
        log("budget.remove", target, path, row.spec, None)
        await session.execute(delete(BudgetRow).where(BudgetRow.id == row.id))
    await session.flush()


def _money(doc: Mapping[str, Any]) -> tuple[Any, Any]:
    return doc.get("amount"), doc.get("overdraft")


async def _forget_alerts(session: AsyncSession, budget_id: int) -> None:
    """A budget given another amount starts its thresholds again: reaching the new amount
    alerts, and its hard stop warns and waits its grace anew (the change is in the audit log)."""
    await session.execute(delete(BudgetAlert).where(BudgetAlert.budget_id == budget_id))


async def set_budget(
    session: AsyncSession,
    *,
    account: Account,
    pool: Pool | None,
    spec: BudgetSpec,
    actor: str,
    now: datetime,
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """A manager's (or administrator's) budget for ``account`` (on ``pool``, or across all
    pools), with its audit entry; returns the spec before and after."""
    pool_id = pool.id if pool is not None else None
    q = select(BudgetRow).where(BudgetRow.account_id == account.id)
    q = q.where(BudgetRow.pool_id.is_(None) if pool_id is None else BudgetRow.pool_id == pool_id)
    row = (await session.execute(q)).scalar_one_or_none()
    doc = _doc(spec)
    before = row.spec if row is not None else None
    if row is None:
        session.add(
            BudgetRow(
                account_id=account.id,
                pool_id=pool_id,
                spec=doc,
                origin="api",
                file_amount=None,
                updated_at=now,
                updated_by=actor,
            )
        )
    else:
        if _money(row.spec) != _money(doc):
            await _forget_alerts(session, row.id)
        row.spec, row.origin, row.updated_at, row.updated_by = doc, "api", now, actor
    audit.record(
        session,
        actor=actor,
        action="budget.set",
        target=budget_target(account.path, pool.name if pool else None),
        now=now,
        account_path=account.path,
        before=before,
        after=doc,
    )
    await session.flush()
    return before, doc


def managers_by_account(session: Session) -> dict[str, tuple[str, ...]]:
    """Managers per account path (the file's and those a manager added), sorted."""
    rows = session.execute(
        select(Account.path, User.name)
        .join(Membership, Membership.account_id == Account.id)
        .join(User, User.id == Membership.user_id)
        .where(Membership.role == "manager")
    )
    out: dict[str, list[str]] = defaultdict(list)
    for path, name in rows:
        out[path].append(name)
    return {path: tuple(sorted(names)) for path, names in out.items()}


def _nearest(path: str, managers: Mapping[str, tuple[str, ...]]) -> tuple[str, ...]:
    for a in (path, *reversed(ancestors(path))):
        if managers.get(a):
            return managers[a]
    return ()


def _spending(session: Session, firsts: list[date]) -> list[tuple[int, int, list[int]]]:
    """(account id, pool id, [micros spent since each of ``firsts``]) from the daily totals,
    in one grouped query over the days since the earliest. The days are read first (a
    materialised range of the primary key): grouped directly, SQLite walks the whole table
    through the (account, day) index to group in its order, four times slower for a month."""
    if not firsts:
        return []
    recent = (
        select(UsageDay.account_id, UsageDay.pool_id, UsageDay.day, UsageDay.amount)
        .where(UsageDay.day >= min(firsts))
        .cte("recent")
        .prefix_with("MATERIALIZED")
    )
    sums = [
        func.coalesce(func.sum(case((recent.c.day >= d, recent.c.amount), else_=0)), 0)
        for d in firsts
    ]
    rows = session.execute(
        select(recent.c.account_id, recent.c.pool_id, *sums).group_by(
            recent.c.account_id, recent.c.pool_id
        )
    )
    return [(r[0], r[1], [int(x) for x in r[2:]]) for r in rows]


def load_budgets(session: Session, policy: Policy, now: datetime) -> list[BudgetStatus]:
    """Every budget of an account in force, with what its subtree spent in its period."""
    rows = session.execute(
        select(BudgetRow, Account.path, Pool.name)
        .join(Account, Account.id == BudgetRow.account_id)
        .outerjoin(Pool, Pool.id == BudgetRow.pool_id)
        .where(Account.archived_at.is_(None))
        .order_by(Account.path, BudgetRow.id)
    ).all()
    tz = policy.accounting.time_zone
    budgets: list[tuple[BudgetRow, str, str | None, BudgetSpec, Period]] = []
    for row, path, pool in rows:
        try:
            spec = BudgetSpec.model_validate(row.spec)
        except ValidationError as e:
            # One bad row (stored before today's bounds) must not stop every budget, and with
            # them the scheduling loop: it is left out, and said so.
            log.warning("budget of %s ignored: %s", budget_target(path, pool), e)
            continue
        budgets.append((row, path, pool, spec, period_bounds(spec.period, now, tz)))
    if not budgets:
        return []
    firsts = sorted({b[4].first_day for b in budgets})
    column = {d: i for i, d in enumerate(firsts)}
    paths: dict[int, str] = {i: p for i, p in session.execute(select(Account.id, Account.path))}
    by_path: dict[str, list[int]] = defaultdict(list)
    for i, (_, path, _, _, _) in enumerate(budgets):
        by_path[path].append(i)
    spent = [0] * len(budgets)
    for account_id, pool_id, sums in _spending(session, firsts):
        under = paths.get(account_id)
        if under is None:
            continue
        for a in (*ancestors(under), under):
            for i in by_path.get(a, ()):
                row, _, _, _, period = budgets[i]
                if row.pool_id is None or row.pool_id == pool_id:
                    spent[i] += sums[column[period.first_day]]
    managers = managers_by_account(session)
    return [
        BudgetStatus(
            id=row.id,
            account=path,
            pool=pool,
            amount=round(spec.amount * MICROS),
            period=period,
            spent=spent[i],
            hard_stop=spec.hard_stop,
            grace=float(spec.grace),
            step_down=spec.step_down,
            overdraft=round(spec.overdraft * MICROS),
            alerts=tuple(spec.alerts),
            origin=row.origin,
            currency=policy.currency,
            managers=_nearest(path, managers),
        )
        for i, (row, path, pool, spec, period) in enumerate(budgets)
    ]


async def budgets_in_force(
    session: AsyncSession, policy: Policy, now: datetime
) -> list[BudgetStatus]:
    """``load_budgets`` on an async session (the API's)."""
    return await session.run_sync(lambda s: load_budgets(s, policy, now))
