"""Usage reports from the ledger's daily totals (``usage_days``).

The daily totals equal the ledger's entries plus the open charges of running workloads, to
the micro (the meter writes both in one transaction), so a report reads them and never scans
the ledger: a year of a busy site is some hundred thousand daily rows, where the ledger holds
millions of entries (benchmarks/usage_report.py).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import ColumnElement, false, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from allotment.db.tables import Account, Pool, Profile, UsageDay, User
from allotment.domain.reports import Days, Grouping, Totals, fold_weeks

__all__ = ["NO_POOL", "NO_PROFILE", "Selection", "usage_report"]

#: How a row names charges made without a pool or a profile (stored as 0).
NO_POOL = "(no pool)"
NO_PROFILE = "(no profile)"


@dataclass(frozen=True, slots=True)
class Selection:
    """Which daily totals a report sums: the ``days``, and where given (None: any) only those
    of ``accounts``, of ``users``, and of ``visible_accounts`` (what a caller may see)."""

    days: Days
    accounts: Collection[int] | None = None
    users: Collection[int] | None = None
    visible_accounts: Collection[int] | None = None


def _filters(s: Selection) -> list[ColumnElement[bool]]:
    u = UsageDay
    out: list[ColumnElement[bool]] = [u.day >= s.days.first, u.day <= s.days.last]
    if s.accounts is not None:
        out.append(u.account_id.in_(list(s.accounts)))
    if s.users is not None:
        out.append(u.user_id.in_(list(s.users)))
    if s.visible_accounts is not None:
        visible = list(s.visible_accounts)
        out.append(u.account_id.in_(visible) if visible else false())
    return out


_COLUMNS = {
    "user": UsageDay.user_id,
    "account": UsageDay.account_id,
    "profile": UsageDay.profile_id,
    "pool": UsageDay.pool_id,
    "day": UsageDay.day,
    "week": UsageDay.day,
}


def _totals(row: Any) -> Totals:
    # PostgreSQL sums bigints as numeric (a Decimal); int() keeps them exact.
    return Totals(
        int(row[1] or 0), float(row[2] or 0), float(row[3] or 0), float(row[4] or 0),
        float(row[5] or 0),
    )  # fmt: skip


#: The table and column that name each grouping's ids.
_NAMES: dict[str, tuple[Any, Any]] = {
    "user": (User, User.name),
    "account": (Account, Account.path),
    "pool": (Pool, Pool.name),
    "profile": (Profile, Profile.name),
}


async def usage_report(
    session: AsyncSession, selection: Selection, by: Grouping
) -> list[tuple[str, Totals]]:
    """The selection's totals grouped ``by`` a dimension, in key order (days and weeks in
    time order): user names, account paths, pool or profile names, ISO days (``2026-12-02``)
    or ISO weeks (``2026-W49``). Groups with nothing in them are left out."""
    column = _COLUMNS[by]
    u = UsageDay
    q = (
        select(
            column,
            func.sum(u.amount),
            func.sum(u.cpu_seconds),
            func.sum(u.memory_gib_seconds),
            func.sum(u.gpu_seconds),
            func.sum(u.used_cpu_seconds),
        )
        .where(*_filters(selection))
        .group_by(column)
    )
    if by in ("day", "week"):
        rows: list[tuple[Any, Totals]] = [(r[0], _totals(r)) for r in await session.execute(q)]
        days: list[tuple[date, Totals]] = sorted(rows, key=lambda r: r[0])
        if by == "week":
            return list(fold_weeks(days).items())
        return [(d.isoformat(), t) for d, t in days]
    # Named in the same statement: the totals grouped first, then joined to their names.
    sums = q.subquery()
    table, name = _NAMES[by]
    named = select(sums, name).outerjoin(table, table.id == sums.c[0])
    none = {"pool": NO_POOL, "profile": NO_PROFILE}.get(by)
    out = []
    for r in await session.execute(named):
        # 0: charged without a pool or profile; an id without a row (removed since) is
        # still shown, by its number.
        key = r[6] if r[6] is not None else none if r[0] == 0 and none else f"#{r[0]}"
        out.append((key, _totals(r)))
    return sorted(out, key=lambda r: r[0])
