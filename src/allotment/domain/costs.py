"""What resources cost: prices per resource-hour, and budget periods.

A workload is charged for what it *requested* for as long as it held it (the ledger's rule,
DESIGN §5), so the price of an hour is known before it starts: that is the quote's cost per
hour, and the meter's rate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from allotment.domain.resources import Resources

__all__ = ["PERIODS", "Rates", "overlap_hours", "period_start"]

GIB = 2**30
PERIODS = ("day", "week", "month", "quarter", "year")


@dataclass(frozen=True, slots=True)
class Rates:
    """Price of one resource for one hour, in the policy's currency."""

    cpu: float = 0.0
    #: Per GiB of memory.
    memory: float = 0.0
    #: Per GPU, by model.
    gpu: Mapping[str, float] = field(default_factory=dict)

    def hourly(self, r: Resources) -> float:
        return (
            self.cpu * r.cpus
            + self.memory * r.memory / GIB
            + sum(self.gpu.get(model, 0.0) * n for model, n in r.gpus.items())
        )


def period_start(now: datetime, period: str) -> datetime:
    """Start (UTC) of the budget period that contains ``now``; weeks start on Monday."""
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())
    if period == "month":
        return day.replace(day=1)
    if period == "quarter":
        return day.replace(day=1, month=(day.month - 1) // 3 * 3 + 1)
    if period == "year":
        return day.replace(day=1, month=1)
    raise ValueError(f"unknown budget period {period!r}; use one of {', '.join(PERIODS)}")


def overlap_hours(
    started: datetime, ended: datetime | None, since: datetime, now: datetime
) -> float:
    """Hours of [started, ended or now] that fall at or after ``since``."""
    end = ended or now
    begin = max(started, since)
    return max((end - begin).total_seconds(), 0.0) / 3600
