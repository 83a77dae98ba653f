"""The ledger's rules: money in millionths, what a span of a workload costs, where spans and
days begin and end, the entries' keys, and which endings are refunded.

Everything charged goes through these rules (docs/design/0004-ledger.md). They are pure, so
that the database pass (``db/ledger.py``) and the tests that check it compute the same
numbers: a span's charge so far is ``charge(rate, elapsed_ms(span start, t))``, and each pass
adds the difference from the last, so the deltas telescope and a span's entry equals the sum
of its interval charges exactly, to the millionth.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from allotment.domain.costs import Rates
from allotment.domain.resources import Resources

__all__ = [
    "MICROS",
    "OURS",
    "Measured",
    "charge",
    "cuts",
    "day_of",
    "day_start",
    "elapsed_ms",
    "entry_key",
    "epoch_ms",
    "external_key",
    "format_money",
    "hourly_micros",
    "iso",
    "is_boundary",
    "ours",
    "refund_key",
    "span_start",
    "split_at_midnight",
    "to_micros",
]

#: Amounts are integers in millionths of the policy's currency ("micros"): sums are exact.
MICROS = 1_000_000
_MS_PER_HOUR = 3_600_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: Endings that are "a reason of ours", refunded in full: the work did not fail for anything
#: its owner did. ``%`` matches any text (as SQL's LIKE, which the database pass uses). The
#: local backend says "vanished without an exit status" when the launcher that held the exit
#: status is gone (the host or the service failed under it) and "outcome unknown: …" when the
#: data directory was full; a restore says its outcome "was lost with the database"; a start
#: that failed on the backend ("could not start: …") never ran, so it has no charges to refund
#: unless it got as far as running. A non-zero exit, a signal, running out of memory, a
#: maximum runtime or a cancel are the workload's own and stay charged.
OURS = (
    "vanished without an exit status%",
    "outcome unknown:%",
    "%outcome was lost with the database%",
    "could not start:%",
)


def ours(failed: bool, reason: str) -> bool:
    """Whether a workload that ended so is refunded: it failed for one of the ``OURS``."""
    if not failed:
        return False
    return any(fnmatch.fnmatchcase(reason, p.replace("%", "*")) for p in OURS)


@dataclass(frozen=True, slots=True)
class Measured:
    """What a backend measured of one running workload, recorded beside its charges."""

    #: CPU seconds the workload has used since it started (cumulative); None: not measured.
    cpu_seconds: float | None = None
    #: Largest memory use since it started, in bytes; None: not measured.
    peak_memory: int | None = None
    #: Mean GPU utilisation now, in [0, 1]; None where it has no GPU or none can be read.
    gpu_utilisation: float | None = None


def to_micros(amount: float) -> int:
    """An amount of the currency in millionths, rounded to the nearest."""
    return round(amount * MICROS)


def format_money(micros: int, currency: str) -> str:
    """How people read an amount: "1,000.00 credits" (rounded to the cent, half up)."""
    sign = "-" if micros < 0 else ""
    cents = (abs(micros) + 5_000) // 10_000
    return f"{sign}{cents // 100:,}.{cents % 100:02d} {currency}"


def hourly_micros(rates: Rates, requested: Resources) -> int:
    """Price of one hour of ``requested`` at ``rates``, in millionths: the entries' rate."""
    return to_micros(rates.hourly(requested))


def charge(rate: int, ms: int) -> int:
    """The charge of ``ms`` milliseconds at ``rate`` millionths an hour, rounded half up.

    Integer arithmetic, the same in Python and in both databases' SQL: a day at a million
    credits an hour is 8.64e16, well inside 64 bits."""
    return (rate * ms + _MS_PER_HOUR // 2) // _MS_PER_HOUR


def elapsed_ms(start: datetime, end: datetime) -> int:
    """Whole milliseconds from ``start`` to ``end``, rounded half up."""
    d = end - start
    us = (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds
    return (us + 500) // 1000


def _us(t: datetime) -> int:
    d = t - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


def epoch_ms(t: datetime) -> int:
    """Milliseconds since the epoch, rounded half up: how the database pass counts time."""
    return (_us(t) + 500) // 1000


def span_start(t: datetime, entry_seconds: int) -> datetime:
    """Start of the span of the clock that holds ``t``: spans are aligned to the epoch (at
    ``1h``, every hour on the hour), so every running workload's entries close together."""
    step = entry_seconds * 1_000_000
    return _EPOCH + timedelta(microseconds=_us(t) // step * step)


def is_boundary(t: datetime, entry_seconds: int) -> bool:
    """Whether ``t`` is where one span ends and the next begins."""
    return span_start(t, entry_seconds) == t


def iso(t: datetime) -> str:
    """The instant in keys: UTC to the microsecond, ``2026-12-02T11:00:00.000000Z``."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def entry_key(workload: int, start: datetime) -> str:
    """Key of a workload's entry for the span that began at ``start``: written once."""
    return f"w:{workload}:{iso(start)}"


def refund_key(workload: int) -> str:
    """Key of a workload's refund: there is at most one."""
    return f"w:{workload}:refund"


def external_key(source: str, external_id: str, start: datetime) -> str:
    """Key of an entry for work Allotment did not submit, named by its backend
    (``source``) and the backend's own name of it. For Slurm, ``external_id`` is
    ``<cluster>:<job id>:<submit time>``, since job ids repeat."""
    if not source or ":" in source:
        raise ValueError(f"a source names a backend, without ':'; got {source!r}")
    if source == "w":
        raise ValueError("source 'w' is the key space of Allotment's own workloads")
    return f"{source}:{external_id}:{iso(start)}"


def day_of(t: datetime, tz: str) -> date:
    """The calendar day in the site's time zone that holds the instant ``t``."""
    return t.astimezone(ZoneInfo(tz)).date()


def day_start(d: date, tz: str) -> datetime:
    """The instant (UTC) the site's day ``d`` begins."""
    return datetime.combine(d, time(), tzinfo=ZoneInfo(tz)).astimezone(UTC)


def _midnights(lo: datetime, hi: datetime, tz: str) -> list[datetime]:
    """Midnights of the site's time zone strictly inside (lo, hi)."""
    out = []
    d = day_of(lo, tz) + timedelta(days=1)
    while (m := day_start(d, tz)) < hi:
        if m > lo:
            out.append(m)
        d += timedelta(days=1)
    return out


def cuts(lo: datetime, hi: datetime, entry_seconds: int, tz: str) -> list[datetime]:
    """Where a pass from ``lo`` to ``hi`` stops on the way: every span boundary and every
    midnight of the site strictly between them, then ``hi``. Between two cuts no charge
    crosses a day or a span, so each step adds to one day's totals and closes whole spans."""
    if hi <= lo:
        return [hi]
    step = timedelta(seconds=entry_seconds)
    found = set(_midnights(lo, hi, tz))
    b = span_start(lo, entry_seconds) + step
    while b < hi:
        found.add(b)
        b += step
    return [*sorted(found), hi]


def split_at_midnight(start: datetime, end: datetime, tz: str) -> list[tuple[date, int]]:
    """[start, end) cut at the site's midnights: (day, milliseconds) of each piece, measured
    from ``start`` so the pieces' charges telescope to the whole's."""
    points = [start, *_midnights(start, end, tz), end]
    return [
        (day_of(a, tz), elapsed_ms(start, b))
        for a, b in zip(points, points[1:], strict=False)
        if b > a
    ]
