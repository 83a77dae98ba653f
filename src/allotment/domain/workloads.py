"""Workloads and their lifecycle.

Everything that uses resources is a workload: a session, a batch job, a Dask scheduler or a
Dask worker. Users, the scheduler and the culler write its ``target``; the reconciler moves its
``status`` towards the target.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum

__all__ = ["TERMINAL", "WorkloadKind", "WorkloadState", "can_cancel"]


class WorkloadKind(StrEnum):
    SESSION = "session"
    JOB = "job"
    DASK_SCHEDULER = "dask-scheduler"
    DASK_WORKER = "dask-worker"


class WorkloadState(IntEnum):
    """Lifecycle states, in lifecycle order."""

    PENDING = 0
    ADMITTED = 1
    STARTING = 2
    RUNNING = 3
    STOPPING = 4
    STOPPED = 5
    FAILED = 6

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> WorkloadState:
        try:
            return cls[text.upper()]
        except KeyError:
            names = ", ".join(s.label for s in cls)
            raise ValueError(f"unknown state {text!r}; use one of {names}") from None


#: States a workload never leaves.
TERMINAL = frozenset({WorkloadState.STOPPED, WorkloadState.FAILED})


def can_cancel(status: WorkloadState, target: WorkloadState) -> bool:
    """A workload can be cancelled until it has been told to stop or has ended."""
    return status not in TERMINAL and target < WorkloadState.STOPPING
