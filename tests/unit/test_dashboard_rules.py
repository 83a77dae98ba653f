"""The dashboard's pure rules: budget periods in the site's time zone, the burn-down and its
projected run-out, and how waste is put in words."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from allotment.web.display import gib, money, waste_of
from allotment.web.periods import burn_down, local_today, period_days

MICROS = 1_000_000


@pytest.mark.parametrize(
    ("period", "today", "expected"),
    [
        ("day", date(2026, 3, 4), (date(2026, 3, 4), date(2026, 3, 4))),
        ("week", date(2026, 3, 4), (date(2026, 3, 2), date(2026, 3, 8))),  # a Wednesday
        ("month", date(2026, 2, 10), (date(2026, 2, 1), date(2026, 2, 28))),
        ("month", date(2026, 12, 31), (date(2026, 12, 1), date(2026, 12, 31))),
        ("quarter", date(2026, 11, 5), (date(2026, 10, 1), date(2026, 12, 31))),
        ("quarter", date(2026, 5, 5), (date(2026, 4, 1), date(2026, 6, 30))),
        ("year", date(2026, 5, 5), (date(2026, 1, 1), date(2026, 12, 31))),
        ("30d", date(2026, 3, 4), (date(2026, 2, 3), date(2026, 3, 4))),
        ("1d", date(2026, 3, 4), (date(2026, 3, 4), date(2026, 3, 4))),
    ],
)
def test_periods_are_whole_days(period: str, today: date, expected: tuple[date, date]) -> None:
    assert period_days(period, today) == expected


def test_an_unknown_period_is_refused() -> None:
    with pytest.raises(ValueError):
        period_days("fortnight", date(2026, 1, 1))


def test_the_site_day_is_the_zones() -> None:
    late = datetime(2026, 1, 31, 23, 30, tzinfo=UTC)
    assert local_today(late, "UTC") == date(2026, 1, 31)
    assert local_today(late, "Europe/Berlin") == date(2026, 2, 1)


def test_burn_down_projects_the_run_out_at_the_rate_so_far() -> None:
    # 10 days of a 30-day month spent 5 a day, at midnight UTC of day 11: 50 of 100 in 10 days,
    # so the 50 left last 10 more days: it runs out at the start of day 21.
    now = datetime(2026, 4, 11, 0, 0, tzinfo=UTC)
    spent = {date(2026, 4, d): 5 * MICROS for d in range(1, 11)}
    burn = burn_down(100 * MICROS, spent, date(2026, 4, 1), date(2026, 4, 30), now, "UTC")
    assert burn.spent == 50 * MICROS
    assert burn.runs_out == datetime(2026, 4, 21, 0, 0, tzinfo=UTC)
    assert burn.left[9] == 50 * MICROS and burn.left[10] == 50 * MICROS  # today, nothing yet
    assert burn.left[11] is None
    # The projection starts today and reaches zero on the day it runs out, then stops.
    assert burn.projected[9] is None
    assert burn.projected[10] == 45 * MICROS
    assert burn.projected[19] == 0
    assert burn.projected[20] is None


def test_a_budget_that_lasts_has_no_run_out() -> None:
    now = datetime(2026, 4, 16, 0, 0, tzinfo=UTC)
    spent = {date(2026, 4, 1): 10 * MICROS}
    burn = burn_down(100 * MICROS, spent, date(2026, 4, 1), date(2026, 4, 30), now, "UTC")
    assert burn.runs_out is None
    nothing = burn_down(100 * MICROS, {}, date(2026, 4, 1), date(2026, 4, 30), now, "UTC")
    assert nothing.runs_out is None and all(p is None for p in nothing.projected)


def test_a_spent_budget_projects_nothing() -> None:
    now = datetime(2026, 4, 16, 0, 0, tzinfo=UTC)
    spent = {date(2026, 4, 2): 120 * MICROS}
    burn = burn_down(100 * MICROS, spent, date(2026, 4, 1), date(2026, 4, 30), now, "UTC")
    assert burn.left[15] == -20 * MICROS
    assert burn.runs_out == now  # already out
    assert all(p is None for p in burn.projected)


def test_waste_in_words() -> None:
    w = waste_of(
        millicpus=16_000,
        memory=64 * 2**30,
        gpus=4,
        seconds=6 * 3600,
        used_cpu_seconds=16 * 6 * 3600 * 0.04,
        peak_memory=int(2.1 * 2**30),
        gpu_utilisation=0.03,
    )
    assert w.words == [
        "4 GPUs at 3.0 % for 6.0 h",
        "16 CPUs at 4.0 % for 6.0 h",
        "64G requested, 2.1G peak",
    ]
    assert w.worst == pytest.approx(0.03)


def test_well_used_or_unmeasured_is_no_waste() -> None:
    busy = waste_of(
        millicpus=2000,
        memory=2**30,
        gpus=0,
        seconds=3600,
        used_cpu_seconds=2 * 3600 * 0.9,
        peak_memory=2**29,
        gpu_utilisation=None,
    )
    assert busy.words == [] and busy.cpu == pytest.approx(0.9) and busy.memory == 0.5
    unknown = waste_of(
        millicpus=2000,
        memory=2**30,
        gpus=1,
        seconds=3600,
        used_cpu_seconds=None,
        peak_memory=None,
        gpu_utilisation=None,
    )
    assert unknown.words == [] and unknown.worst == 1.0


def test_money_and_sizes() -> None:
    assert money(1_000 * MICROS, "credits") == "1,000.00 credits"
    assert money(None, "EUR") == "0.00 EUR"
    assert money(1, "EUR") == "0.00 EUR"
    assert (gib(64 * 2**30), gib(2**30), gib(int(2.1 * 2**30)), gib(512 * 2**20)) == (
        "64G",
        "1G",
        "2.1G",
        "512M",
    )
