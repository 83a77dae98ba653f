"""Budget periods as whole days in the site's time zone (common.md's shared rule): what the
dashboard shows a budget's spending over, and the burn-down's projection."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from allotment.domain.budgets import period_bounds

__all__ = ["BurnDown", "burn_down", "local_today", "period_days"]


def local_today(now: datetime, tz: str) -> date:
    return now.astimezone(ZoneInfo(tz)).date()


def period_days(period: str, today: date) -> tuple[date, date]:
    """First and last day of the ``period`` that holds ``today``: the budgets' own rule
    (``domain.budgets.period_bounds``), so the page and the enforcement never disagree."""
    p = period_bounds(period, datetime.combine(today, time(12), tzinfo=UTC), "UTC")
    return p.first_day, p.last_day


@dataclass(frozen=True, slots=True)
class BurnDown:
    """What is left of a budget after each day of its period, and when it runs out."""

    #: Days of the period, first to last.
    days: list[date]
    #: Left at the end of each day up to today (micros); None after today.
    left: list[int | None]
    #: The projection from today at the period's rate so far (micros); None before today,
    #: and after the budget runs out or the period ends.
    projected: list[int | None]
    #: When it runs out at the current rate: None when it lasts the period (or nothing is spent).
    runs_out: datetime | None
    spent: int


def burn_down(
    amount: int,
    spent_by_day: dict[date, int],
    first: date,
    last: date,
    now: datetime,
    tz: str,
) -> BurnDown:
    """The burn-down of ``amount`` (micros) over ``first``..``last`` given what was spent each
    day; the projection assumes the rate so far (spent ÷ time elapsed in the period) holds."""
    zone = ZoneInfo(tz)
    local_now = now.astimezone(zone)
    today = local_now.date()
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    left: list[int | None] = []
    total = 0
    for d in days:
        if d > today:
            left.append(None)
            continue
        total += spent_by_day.get(d, 0)
        left.append(amount - total)
    start = datetime(first.year, first.month, first.day, tzinfo=zone)
    elapsed = (local_now - start).total_seconds()
    rate = total / elapsed if elapsed > 0 else 0.0  # micros per second
    runs_out: datetime | None = None
    remaining = amount - total
    end = datetime(last.year, last.month, last.day, tzinfo=zone) + timedelta(days=1)
    if rate > 0:
        at = local_now + timedelta(seconds=max(remaining, 0) / rate)
        runs_out = at if at < end else None
    projected: list[int | None] = []
    reached_zero = remaining <= 0
    for d in days:
        if d < today or rate <= 0 or reached_zero:
            projected.append(None)
            continue
        day_end = datetime(d.year, d.month, d.day, tzinfo=zone) + timedelta(days=1)
        value = remaining - rate * (day_end - local_now).total_seconds()
        reached_zero = value <= 0
        projected.append(max(round(value), 0))
    return BurnDown(days, left, projected, runs_out, total)
