"""The meter's warnings: what a running workload's owner is told before a limit stops it.

Pure, so each rule is tested on its own; the meter route (``api/routes/meter.py``) reads the
workload, the policy and the budget, and shows what this returns in JupyterLab's status bar.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Protocol

from allotment.domain.quantities import format_while

__all__ = ["WARN_BEFORE", "Budget", "meter_warnings", "runtime_end"]

#: Warn this long before a limit stops a workload.
WARN_BEFORE = timedelta(minutes=15)


class Budget(Protocol):
    """The tightest budget over a workload (the API's ``BudgetLeft`` is one)."""

    @property
    def account(self) -> str: ...
    @property
    def period(self) -> str: ...
    #: At 100 %: new work is held (and running work stopped after a grace).
    @property
    def hard_stop(self) -> bool: ...
    #: Hours the workload could run before the budget is spent; None when it costs nothing.
    @property
    def hours_left(self) -> float | None: ...


def runtime_end(started_at: datetime | None, max_runtime: int | None) -> datetime | None:
    """When the maximum runtime stops a workload; None when it has none or has not started."""
    if not max_runtime or started_at is None:
        return None
    return started_at + timedelta(seconds=max_runtime)


def meter_warnings(
    now: datetime,
    *,
    running: bool,
    stops_at: datetime | None,
    idle_deadline: datetime | None,
    cull_warning: timedelta,
    budget: Budget | None,
    blocked: bool,
) -> list[str]:
    """Warnings for a workload at ``now``, soonest limit's kind first: its maximum runtime,
    the idle culler (``idle_deadline``: when an unused session is stopped; None for anything
    else or when culling is off), and its budget (``blocked``: spent, new work is held)."""
    out = []
    if running and stops_at is not None and stops_at - now <= WARN_BEFORE:
        out.append(
            f"Its maximum runtime ends in {format_while((stops_at - now).total_seconds())}: it "
            f"will be stopped at {stops_at:%H:%M} UTC. Save your work."
        )
    if idle_deadline is not None and idle_deadline - now <= cull_warning:
        out.append(
            f"Unused for a while: it will be stopped at {idle_deadline:%H:%M} UTC unless you use "
            "it (run something, or just open it)."
        )
    if running and budget is not None and budget.hard_stop:
        if blocked:
            out.append(
                f"The budget of {budget.account} is spent: new work is held, and running "
                "work is stopped after a grace period unless the budget is raised."
            )
        elif (
            budget.hours_left is not None
            and budget.hours_left * 3600 <= WARN_BEFORE.total_seconds()
        ):
            out.append(
                f"The budget of {budget.account} runs out in about "
                f"{format_while(budget.hours_left * 3600)} at this rate; then new work is held."
            )
    return out
