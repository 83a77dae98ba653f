"""Workloads and their lifecycle.

Everything that uses resources is a workload: a session, a batch job, a Dask scheduler or a
Dask worker. Users, the scheduler and the culler write its ``target``; the reconciler moves its
``status`` towards the target.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum, StrEnum

__all__ = [
    "ACTIVE",
    "DASK_KINDS",
    "MAX_ARRAY",
    "MAX_ARRAY_INDEX",
    "TERMINAL",
    "TRANSITIONS",
    "WorkloadKind",
    "WorkloadState",
    "can_cancel",
    "can_move",
    "parse_array",
    "sources",
]


class WorkloadKind(StrEnum):
    SESSION = "session"
    JOB = "job"
    DASK_SCHEDULER = "dask-scheduler"
    DASK_WORKER = "dask-worker"


#: The kinds a Dask cluster is made of: only ``dask/clusters`` creates them.
DASK_KINDS = frozenset({WorkloadKind.DASK_SCHEDULER, WorkloadKind.DASK_WORKER})


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

#: States in which a workload holds resources.
ACTIVE = (
    WorkloadState.ADMITTED,
    WorkloadState.STARTING,
    WorkloadState.RUNNING,
    WorkloadState.STOPPING,
)

_S = WorkloadState

#: Every change of ``status`` a workload may make: state → the states it may go to. The
#: guarded writes in ``db/workloads.py`` take their guards from here, so a write the table does
#: not allow cannot be expressed. Why each edge exists:
#:
#: - PENDING → ADMITTED (the scheduler admits it), FAILED (rejected: it can never run, or the
#:   workload it runs after failed), STOPPED (cancelled before it was admitted).
#: - ADMITTED → STARTING (the reconciler begins its start), FAILED (every start attempt
#:   failed), STOPPED (told to stop before anything of it ran).
#: - STARTING → RUNNING, STOPPING (told to stop once something may run), FAILED, STOPPED (as
#:   from ADMITTED, while no placement says anything runs).
#: - RUNNING → STOPPING (told to stop), STOPPED or FAILED (ended on its own), STARTING
#:   (requeued by its backend: a Slurm node failed and Slurm put the batch job back in its
#:   own queue; it keeps its placement and starts again where Slurm puts it).
#: - STOPPING → STOPPED or FAILED (failed only where it failed on its own, e.g. out of memory).
TRANSITIONS: Mapping[WorkloadState, frozenset[WorkloadState]] = {
    _S.PENDING: frozenset({_S.ADMITTED, _S.FAILED, _S.STOPPED}),
    _S.ADMITTED: frozenset({_S.STARTING, _S.FAILED, _S.STOPPED}),
    _S.STARTING: frozenset({_S.RUNNING, _S.STOPPING, _S.FAILED, _S.STOPPED}),
    _S.RUNNING: frozenset({_S.STOPPING, _S.STOPPED, _S.FAILED, _S.STARTING}),
    _S.STOPPING: frozenset({_S.STOPPED, _S.FAILED}),
    _S.STOPPED: frozenset(),
    _S.FAILED: frozenset(),
}


def can_move(status: WorkloadState, to: WorkloadState) -> bool:
    """Whether a workload in ``status`` may go to ``to`` (staying put is not a move)."""
    return to in TRANSITIONS[status]


def sources(to: WorkloadState) -> frozenset[WorkloadState]:
    """The states from which a workload may go to ``to``: the guard of a write to it."""
    return frozenset(s for s, targets in TRANSITIONS.items() if to in targets)


def can_cancel(status: WorkloadState, target: WorkloadState) -> bool:
    """A workload can be cancelled until it has been told to stop or has ended."""
    return status not in TERMINAL and target < WorkloadState.STOPPING


#: Most tasks one job array may have.
MAX_ARRAY = 10_000
#: Largest index of a task (Slurm's largest ``MaxArraySize`` less one).
MAX_ARRAY_INDEX = 4_000_000


def parse_array(text: str) -> list[int]:
    """Indices of a job array, as Slurm's ``--array``: ``0-99``, ``0-99:10``, ``1,4,9`` or a mix.

    Raises ValueError, saying what was wrong, for anything else.
    """
    out: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            raise ValueError(f"array {text!r} has an empty element; write e.g. 0-99 or 1,4,9")
        rng, _, step_text = part.partition(":")
        lo_text, dash, hi_text = rng.partition("-")
        try:
            lo = int(lo_text)
            hi = int(hi_text) if dash else lo
            step = int(step_text) if step_text else 1
        except ValueError:
            raise ValueError(
                f"array element {part!r} is not a number, a range (0-99) or a stepped range "
                "(0-99:10)"
            ) from None
        if lo < 0 or hi < lo or step < 1:
            raise ValueError(
                f"array element {part!r} needs 0 ≤ start ≤ end and a step of at least 1"
            )
        if hi > MAX_ARRAY_INDEX:
            raise ValueError(
                f"array element {part!r} goes to {hi}; indices go up to {MAX_ARRAY_INDEX}"
            )
        if (hi - lo) // step + 1 + len(out) > MAX_ARRAY:
            raise ValueError(f"an array may have at most {MAX_ARRAY} tasks")
        out.update(range(lo, hi + 1, step))
    return sorted(out)
