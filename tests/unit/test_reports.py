"""Usage reports' pure rules: which days a period or a start names, ISO weeks, efficiency,
and that folding days into weeks neither loses nor adds a micro."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from allotment.domain.reports import (
    Days,
    Totals,
    default_days,
    efficiency,
    fold_weeks,
    period_days,
    since_days,
    week_of,
)

DAYS = st.dates(min_value=date(1900, 1, 1), max_value=date(2999, 12, 31))


@pytest.mark.parametrize(
    ("text", "first", "last"),
    [
        ("2026", date(2026, 1, 1), date(2026, 12, 31)),
        ("2026-Q1", date(2026, 1, 1), date(2026, 3, 31)),
        ("2026-q4", date(2026, 10, 1), date(2026, 12, 31)),
        ("2024-02", date(2024, 2, 1), date(2024, 2, 29)),
        ("2026-2", date(2026, 2, 1), date(2026, 2, 28)),
        ("2026-12", date(2026, 12, 1), date(2026, 12, 31)),
        (" 2026-12-02 ", date(2026, 12, 2), date(2026, 12, 2)),
    ],
)
def test_periods_name_their_days(text: str, first: date, last: date) -> None:
    assert period_days(text) == Days(first, last)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("2026-13", "there is no month 13 (months are 1 to 12)"),
        ("0000-01", "there is no month"),
        ("2026-Q0", "a quarter is Q1 to Q4"),
        ("2026-Q5", "a quarter is Q1 to Q4"),
        ("0000", "there is no year 0"),
        ("2026-02-30", "day is out of range for month"),
        ("December", "is not a period"),
        ("", "is not a period"),
    ],
)
def test_a_wrong_period_says_what_was_wrong_and_the_forms(text: str, words: str) -> None:
    with pytest.raises(ValueError) as e:
        period_days(text)
    assert words in str(e.value)
    assert "2026-Q4" in str(e.value) and "2026-12-02" in str(e.value)


@given(DAYS)
def test_every_period_of_a_day_contains_it_and_nests(day: date) -> None:
    year = period_days(f"{day.year:04d}")
    quarter = period_days(f"{day.year:04d}-Q{(day.month - 1) // 3 + 1}")
    month = period_days(f"{day.year:04d}-{day.month:02d}")
    one = period_days(day.isoformat())
    assert one == Days(day, day)
    for outer, inner in [(year, quarter), (quarter, month), (month, one)]:
        assert outer.first <= inner.first <= inner.last <= outer.last
    # A month ends the day before the next begins.
    assert (month.last + timedelta(days=1)).day == 1


@given(DAYS, st.integers(min_value=1, max_value=3660))
def test_the_last_n_days_are_n_days_ending_today(today: date, n: int) -> None:
    days = since_days(f"{n}d", today)
    assert days.last == today
    assert (days.last - days.first).days + 1 == n
    assert since_days(days.first.isoformat(), today) == days


def test_since_refuses_what_it_cannot_mean() -> None:
    today = date(2026, 12, 15)
    assert default_days(today) == Days(date(2026, 11, 16), today)
    for text, words in [
        ("0d", "give 1d to"),
        ("99999d", "give 1d to"),
        ("tomorrow", "is not a start"),
        ("2026-12-16", "after today (2026-12-15)"),
    ]:
        with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
            since_days(text, today)


def test_weeks_are_iso_weeks_from_monday() -> None:
    assert week_of(date(2026, 11, 30)) == week_of(date(2026, 12, 6)) == "2026-W49"
    assert week_of(date(2026, 12, 7)) == "2026-W50"
    assert week_of(date(2027, 1, 1)) == "2026-W53"  # a Friday: 2026's last week


def test_efficiency_is_used_over_requested() -> None:
    assert efficiency(900.0, 3600.0) == 0.25
    assert efficiency(5.0, 0.0) is None


TOTALS = st.builds(
    Totals,
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(0, 1e9),
    st.floats(0, 1e9),
    st.floats(0, 1e9),
    st.floats(0, 1e9),
)


@given(st.lists(st.tuples(DAYS, TOTALS), max_size=60))
def test_folding_days_into_weeks_keeps_every_micro(days: list[tuple[date, Totals]]) -> None:
    weeks = fold_weeks(days)
    assert sum(t.amount for t in weeks.values()) == sum(t.amount for _, t in days)
    for week, t in weeks.items():
        assert t.amount == sum(d.amount for day, d in days if week_of(day) == week)
    assert list(weeks) == sorted(weeks, key=lambda w: min(d for d, _ in days if week_of(d) == w))
