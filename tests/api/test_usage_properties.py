"""Hypothesis over the report's query (`db/reports.usage_report`) on SQLite: for any daily
totals, any days, any grouping and any account, user and visibility filter, each row is the
exact sum of the daily totals it stands for, no total is lost or counted twice, and rows come
in key order."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import date, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from allotment.db.reports import NO_POOL, NO_PROFILE, Selection, usage_report
from allotment.db.tables import Base, UsageDay
from allotment.domain.reports import GROUPINGS, Days, Grouping, week_of

FIRST = date(2026, 11, 1)
IDS = st.integers(1, 4)
#: (day offset, account, user, pool, profile): the daily totals' key; 0 = no pool or profile.
KEY = st.tuples(st.integers(0, 60), IDS, IDS, st.integers(0, 2), st.integers(0, 2))
ROWS = st.lists(
    st.tuples(KEY, st.integers(-(10**9), 10**12), st.integers(0, 10**6)),
    max_size=40,
    unique_by=lambda r: r[0],
)
FILTER = st.none() | st.frozensets(IDS, max_size=4)


def _key(by: Grouping, day: date, account: int, user: int, pool: int, profile: int) -> str:
    if by == "day":
        return day.isoformat()
    if by == "week":
        return week_of(day)
    if by == "pool":
        return NO_POOL if pool == 0 else f"#{pool}"
    if by == "profile":
        return NO_PROFILE if profile == 0 else f"#{profile}"
    return f"#{account if by == 'account' else user}"  # no such row: shown by its number


async def _report(
    rows: list[tuple[tuple[int, int, int, int, int], int, int]], s: Selection, by: Grouping
) -> list[tuple[str, int, float]]:
    engine = create_async_engine("sqlite+aiosqlite://")
    try:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        async with AsyncSession(engine) as session, session.begin():
            for (offset, account, user, pool, profile), amount, cpu in rows:
                session.add(
                    UsageDay(
                        day=FIRST + timedelta(days=offset),
                        account_id=account,
                        user_id=user,
                        pool_id=pool,
                        profile_id=profile,
                        amount=amount,
                        cpu_seconds=float(cpu),
                        memory_gib_seconds=0.0,
                        gpu_seconds=0.0,
                        share_seconds=0.0,
                        used_cpu_seconds=0.0,
                    )  # fmt: skip
                )
        async with AsyncSession(engine) as session:
            got = await usage_report(session, s, by)
        return [(k, t.amount, t.cpu_seconds) for k, t in got]
    finally:
        await engine.dispose()


@settings(max_examples=60, deadline=None)
@given(
    rows=ROWS,
    by=st.sampled_from(GROUPINGS),
    first=st.integers(0, 60),
    length=st.integers(0, 60),
    accounts=FILTER,
    users=FILTER,
    visible=FILTER,
)
def test_each_row_is_the_exact_sum_of_what_it_stands_for(
    rows: list[tuple[tuple[int, int, int, int, int], int, int]],
    by: Grouping,
    first: int,
    length: int,
    accounts: frozenset[int] | None,
    users: frozenset[int] | None,
    visible: frozenset[int] | None,
) -> None:
    days = Days(FIRST + timedelta(days=first), FIRST + timedelta(days=first + length))
    selection = Selection(days=days, accounts=accounts, users=users, visible_accounts=visible)
    got = asyncio.run(_report(rows, selection, by))
    amounts: dict[str, int] = defaultdict(int)
    cpus: dict[str, int] = defaultdict(int)
    for (offset, account, user, pool, profile), amount, cpu in rows:
        day = FIRST + timedelta(days=offset)
        if not days.first <= day <= days.last:
            continue
        if any(f is not None and x not in f for f, x in [(accounts, account), (users, user), (visible, account)]):  # fmt: skip
            continue
        key = _key(by, day, account, user, pool, profile)
        amounts[key] += amount
        cpus[key] += cpu
    assert {k: a for k, a, _ in got} == amounts
    assert {k: c for k, _, c in got} == cpus  # whole seconds: exact in a float
    assert [k for k, _, _ in got] == sorted(amounts)
