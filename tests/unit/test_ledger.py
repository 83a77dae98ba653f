"""The ledger's pure rules (domain/ledger.py): money, charges that telescope, spans aligned
to the clock, keys, days in the site's time zone, cuts of a pass, and the refund rule."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from allotment.domain.costs import Rates
from allotment.domain.ledger import (
    charge,
    cuts,
    day_of,
    day_start,
    elapsed_ms,
    entry_key,
    external_key,
    format_money,
    hourly_micros,
    is_boundary,
    iso,
    ours,
    refund_key,
    span_start,
    split_at_midnight,
    to_micros,
)
from allotment.domain.resources import Resources

T = datetime(2026, 12, 2, 11, 49, 43, 123456, tzinfo=UTC)
times = st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2035, 1, 1), timezones=st.just(UTC)
)


def test_money_is_shown_to_the_cent() -> None:
    assert to_micros(1000) == 1_000_000_000
    assert format_money(1_000_000_000, "credits") == "1,000.00 credits"
    assert format_money(-1_234_565_000, "EUR") == "-1,234.57 EUR"
    assert format_money(4_999, "EUR") == "0.00 EUR"


def test_an_hour_of_what_was_requested() -> None:
    rates = Rates(cpu=2.0, memory=0.5, gpu={"a100": 10.0})
    assert hourly_micros(rates, Resources.of(2, 4 * 2**30, {"a100": 1})) == 16_000_000


@given(
    rate=st.integers(0, 10**12),
    a=st.integers(0, 86_400_000),
    b=st.integers(0, 86_400_000),
)
def test_charges_telescope(rate: int, a: int, b: int) -> None:
    """The pass adds charge(t2) - charge(t1): a span's deltas sum to its whole charge, and
    no delta is negative."""
    lo, hi = sorted((a, b))
    assert charge(rate, lo) <= charge(rate, hi)
    assert abs(charge(rate, hi) - rate * hi / 3_600_000) <= 0.5


def test_an_hour_at_a_rate_is_the_rate() -> None:
    assert charge(3_000_000, 3_600_000) == 3_000_000
    assert charge(1, 1_800_000) == 1  # half up


def test_elapsed_milliseconds_round_half_up() -> None:
    assert elapsed_ms(T, T + timedelta(microseconds=1_500)) == 2
    assert elapsed_ms(T, T + timedelta(microseconds=1_499)) == 1
    assert elapsed_ms(T, T + timedelta(days=1)) == 86_400_000


@given(t=times, entry=st.sampled_from([60, 600, 3600, 86_400]))
def test_spans_are_aligned_to_the_clock(t: datetime, entry: int) -> None:
    s = span_start(t, entry)
    assert s <= t < s + timedelta(seconds=entry)
    assert is_boundary(s, entry)
    assert int(s.timestamp()) % entry == 0


def test_keys() -> None:
    start = datetime(2026, 12, 2, 11, tzinfo=UTC)
    assert iso(start) == "2026-12-02T11:00:00.000000Z"
    assert entry_key(7, start) == "w:7:2026-12-02T11:00:00.000000Z"
    assert refund_key(7) == "w:7:refund"
    submitted = iso(datetime(2026, 12, 1, tzinfo=UTC))
    assert (
        external_key("slurm", f"hpc:4242:{submitted}", start)
        == "slurm:hpc:4242:2026-12-01T00:00:00.000000Z:2026-12-02T11:00:00.000000Z"
    )
    with pytest.raises(ValueError, match="without ':'"):
        external_key("sl:urm", "x", start)
    with pytest.raises(ValueError, match="Allotment's own"):
        external_key("w", "x", start)


def test_days_are_the_sites() -> None:
    late = datetime(2026, 12, 31, 23, 30, tzinfo=UTC)
    assert day_of(late, "UTC") == date(2026, 12, 31)
    assert day_of(late, "Europe/Berlin") == date(2027, 1, 1)
    assert day_start(date(2027, 1, 1), "Europe/Berlin") == datetime(2026, 12, 31, 23, tzinfo=UTC)


def test_a_pass_stops_at_every_span_end_and_midnight() -> None:
    lo = datetime(2026, 3, 28, 21, 30, tzinfo=UTC)
    hi = datetime(2026, 3, 29, 0, 15, tzinfo=UTC)
    assert cuts(lo, hi, 3600, "Europe/Berlin") == [
        datetime(2026, 3, 28, 22, tzinfo=UTC),
        datetime(2026, 3, 28, 23, tzinfo=UTC),  # an hour's end and Berlin's midnight, once
        datetime(2026, 3, 29, 0, tzinfo=UTC),
        hi,
    ]
    assert cuts(hi, hi, 3600, "UTC") == [hi]
    assert cuts(hi, lo, 3600, "UTC") == [lo]


@given(start=times, seconds=st.integers(0, 5 * 86_400), tz=st.sampled_from(["UTC", "Asia/Tokyo"]))
def test_a_split_at_midnight_telescopes(start: datetime, seconds: int, tz: str) -> None:
    end = start + timedelta(seconds=seconds)
    pieces = split_at_midnight(start, end, tz)
    if seconds == 0:
        assert pieces == []
        return
    assert pieces[-1][1] == elapsed_ms(start, end)
    assert [d for d, _ in pieces] == sorted({d for d, _ in pieces})
    assert pieces[0][0] == day_of(start, tz)


def test_endings_of_ours_are_refunded_and_the_workloads_own_are_not() -> None:
    assert ours(True, "vanished without an exit status")
    assert ours(True, "outcome unknown: the data directory's file system (/x) was full")
    assert ours(True, "ran after the backup was taken, and its outcome was lost with the database")
    assert ours(True, "could not start: no such user")
    assert not ours(True, "exited with status 1")
    assert not ours(True, "out of memory: used 1G of 1G")
    assert not ours(False, "vanished without an exit status")
