"""The culler: sessions nobody uses are stopped, after a warning in their meter.

Use is any of: browser or kernel activity the session reports (``POST workloads/{id}/activity``
from its server extension; a busy kernel counts as in use), or CPU use the backend measures
(5% of a core over a poll interval: a long computation with the browser closed is real work).
Everything that counts ends up in ``workloads.last_activity``, which the meter also reads.

The rules are pure functions of what the watch over running workloads read (``watch.py``):
which sessions are idle and why, which workloads are past their maximum runtime.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime, timedelta

from allotment.domain.quantities import format_duration

__all__ = ["CpuWatch", "idle_deadline", "idle_sessions", "overdue"]


class CpuWatch:
    """CPU use of running sessions between two polls."""

    def __init__(self, min_cores: float = 0.05) -> None:
        self.min_cores = min_cores
        self._last: dict[int, tuple[float, float]] = {}

    def busy(self, workload: int, cpu_seconds: float, at: float) -> bool:
        """Whether it used at least ``min_cores`` since the last sample; the first sample
        (a new session, or this controller just started) counts as use."""
        prev = self._last.get(workload)
        self._last[workload] = (at, cpu_seconds)
        if prev is None:
            return True
        elapsed = at - prev[0]
        return elapsed > 0 and (cpu_seconds - prev[1]) / elapsed >= self.min_cores

    def keep(self, workloads: set[int]) -> None:
        """Forget the sessions that are gone."""
        for w in set(self._last) - workloads:
            del self._last[w]


def idle_deadline(
    started_at: datetime, last_activity: datetime | None, cull_idle: int
) -> datetime | None:
    """When an unused session will be stopped (None: culling is off)."""
    if cull_idle <= 0:
        return None
    since = max(started_at, last_activity) if last_activity else started_at
    return since + timedelta(seconds=cull_idle)


def idle_sessions(
    sessions: Mapping[int, tuple[datetime, datetime | None]],
    used: Collection[int],
    now: datetime,
    cull_idle: int,
) -> dict[int, str]:
    """Sessions (id → (started, last activity)) unused for ``cull_idle`` seconds, with the
    reason they stop; ``used``: those seen in use just now."""
    out = {}
    for wid, (started, last) in sessions.items():
        deadline = idle_deadline(started, last, cull_idle)
        if wid in used or deadline is None or now < deadline:
            continue
        since = max(started, last) if last else started
        out[wid] = (
            f"stopped after {format_duration(cull_idle)} unused (no browser, kernel or "
            f"CPU activity since {since:%H:%M} UTC)"
        )
    return out


def overdue(started_at: datetime | None, max_runtime: int | None, now: datetime) -> str | None:
    """Why a running workload stops now that it is past its maximum runtime; None while it is
    not (or has none)."""
    if not max_runtime or started_at is None:
        return None
    if (now - started_at).total_seconds() <= max_runtime:
        return None
    return f"reached its maximum runtime ({format_duration(max_runtime)})"
