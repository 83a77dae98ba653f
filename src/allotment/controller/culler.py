"""The culler: sessions nobody uses are stopped, after a warning in their meter.

Use is any of: browser or kernel activity the session reports (``POST workloads/{id}/activity``
from its server extension; a busy kernel counts as in use), or CPU use the backend measures
(5% of a core over a poll interval: a long computation with the browser closed is real work).
Everything that counts ends up in ``workloads.last_activity``, which the meter also reads.
"""

from __future__ import annotations

from datetime import datetime, timedelta

__all__ = ["CpuWatch", "idle_deadline"]


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
