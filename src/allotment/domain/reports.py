"""Usage reports: which days a report covers, how its rows are grouped, and what each row
holds (DESIGN §5).

Pure, so the rules are tested on their own. A report reads the ledger's daily totals
(``usage_days``), whose days are calendar dates in the site's time zone: a report's period is
therefore a run of whole days, ``first`` to ``last`` inclusive, never a span of hours.
Money is in millionths of the currency ("micros") so sums are exact.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Literal

__all__ = [
    "GROUPINGS",
    "PERIOD_FORMS",
    "SINCE_FORMS",
    "Days",
    "Grouping",
    "Totals",
    "default_days",
    "efficiency",
    "fold_weeks",
    "period_days",
    "since_days",
    "week_of",
]

Grouping = Literal["user", "account", "profile", "pool", "day", "week"]
#: What a report's rows may be grouped by.
GROUPINGS: tuple[Grouping, ...] = ("user", "account", "profile", "pool", "day", "week")

PERIOD_FORMS = "a year (2026), a quarter (2026-Q4), a month (2026-12) or a day (2026-12-02)"
SINCE_FORMS = "a number of days (30d: today and the 29 days before) or a first day (2026-11-01)"
#: Longest report: about a century of days keeps every date arithmetic in range.
MAX_DAYS = 36_600

_YEAR = re.compile(r"(\d{4})")
_QUARTER = re.compile(r"(\d{4})-[Qq](\d+)")
_MONTH = re.compile(r"(\d{4})-(\d{1,2})")
_DAY = re.compile(r"(\d{4})-(\d{1,2})-(\d{1,2})")
_LAST_DAYS = re.compile(r"(\d+)d")


@dataclass(frozen=True, slots=True)
class Days:
    """The days a report covers, ``first`` to ``last`` inclusive (dates in the site's time
    zone)."""

    first: date
    last: date


def _month_days(year: int, month: int) -> Days:
    if month == 12:
        return Days(date(year, 12, 1), date(year, 12, 31))
    return Days(date(year, month, 1), date(year, month + 1, 1) - timedelta(days=1))


def period_days(text: str) -> Days:
    """The days of a calendar period: ``2026`` (a year), ``2026-Q4``, ``2026-12`` or
    ``2026-12-02``. Raises ``ValueError`` saying what was wrong and which forms are taken."""
    t = text.strip()
    if m := _YEAR.fullmatch(t):
        year = int(m[1])
        if year < 1:
            raise ValueError(f"period {text!r}: there is no year 0; use {PERIOD_FORMS}")
        return Days(date(year, 1, 1), date(year, 12, 31))
    if m := _QUARTER.fullmatch(t):
        year, quarter = int(m[1]), int(m[2])
        if not 1 <= quarter <= 4 or year < 1:
            raise ValueError(
                f"period {text!r}: a quarter is Q1 to Q4 of a year from 0001; use {PERIOD_FORMS}"
            )
        first = _month_days(year, quarter * 3 - 2).first
        return Days(first, _month_days(year, quarter * 3).last)
    if m := _MONTH.fullmatch(t):
        year, month = int(m[1]), int(m[2])
        if not 1 <= month <= 12 or year < 1:
            raise ValueError(
                f"period {text!r}: there is no month {month} (months are 1 to 12); "
                f"use {PERIOD_FORMS}"
            )
        return _month_days(year, month)
    if m := _DAY.fullmatch(t):
        try:
            day = date(int(m[1]), int(m[2]), int(m[3]))
        except ValueError as e:
            raise ValueError(f"period {text!r}: {e}; use {PERIOD_FORMS}") from None
        return Days(day, day)
    raise ValueError(f"period {text!r} is not a period; use {PERIOD_FORMS}")


def since_days(text: str, today: date) -> Days:
    """The days from a start to ``today``: ``30d`` (today and the 29 days before, as a
    rolling budget counts them) or a first day, ``2026-11-01``. Raises ``ValueError``
    saying what was wrong and which forms are taken."""
    t = text.strip()
    if m := _LAST_DAYS.fullmatch(t):
        n = int(m[1])
        if not 1 <= n <= MAX_DAYS:
            raise ValueError(f"since {text!r}: give 1d to {MAX_DAYS}d; or use {SINCE_FORMS}")
        return Days(today - timedelta(days=n - 1), today)
    try:
        first = date.fromisoformat(t)
    except ValueError:
        raise ValueError(f"since {text!r} is not a start; use {SINCE_FORMS}") from None
    if first > today:
        raise ValueError(f"since {text!r} is after today ({today.isoformat()}): nothing to show")
    return Days(first, today)


def default_days(today: date) -> Days:
    """A report that names no period: the last 30 days."""
    return since_days("30d", today)


def week_of(day: date) -> str:
    """The ISO week (from Monday) a day falls in: ``2026-W49``."""
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


def efficiency(used_cpu_seconds: float, cpu_seconds: float) -> float | None:
    """Measured CPU time over requested CPU time; None where nothing was requested."""
    return used_cpu_seconds / cpu_seconds if cpu_seconds > 0 else None


@dataclass(frozen=True, slots=True)
class Totals:
    """What a report's row sums: the charge (micros) and the requested and used
    resource-seconds."""

    amount: int = 0
    cpu_seconds: float = 0.0
    memory_gib_seconds: float = 0.0
    gpu_seconds: float = 0.0
    used_cpu_seconds: float = 0.0

    def __add__(self, other: Totals) -> Totals:
        return Totals(
            self.amount + other.amount,
            self.cpu_seconds + other.cpu_seconds,
            self.memory_gib_seconds + other.memory_gib_seconds,
            self.gpu_seconds + other.gpu_seconds,
            self.used_cpu_seconds + other.used_cpu_seconds,
        )


def fold_weeks(days: Iterable[tuple[date, Totals]]) -> dict[str, Totals]:
    """Daily totals summed into ISO weeks (``2026-W49``), in week order."""
    weeks: dict[str, Totals] = {}
    for day, totals in sorted(days, key=lambda d: d[0]):
        key = week_of(day)
        weeks[key] = weeks.get(key, Totals()) + totals
    return weeks
