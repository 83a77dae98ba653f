"""Failpoints: named steps at which a crash test stops the controller, as a power cut would.

The real crash tests (``tests/integration/test_crash.py``, ``test_job_crash.py``) start the
service with ``ALLOTMENT_FAILPOINT=<step>``: the process kills itself with SIGKILL the first
time it reaches that step. The fast tier runs the controller in its own process, so it arms a
step with an action instead (raising a ``BaseException`` that no loop catches), and the same
code path stops where a crash would.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable

__all__ = ["FAILPOINT", "STEPS", "arm", "disarm", "failpoint"]

log = logging.getLogger("allotment.controller")

#: Every step a failpoint can name, in a workload's lifecycle order. Each follows a durable
#: write (or, for ``placing`` and ``launched``, an action on the backend) that a crash right
#: after must not lose or repeat.
STEPS = (
    "admitted",  # the scheduling loop committed its admissions
    "placing",  # the backend yielded a placement from which nothing runs yet
    "launched",  # the backend yielded a placement with a process id
    "starting",  # STARTING and the first placement are written
    "placed",  # a placement was written (or, after the first, yielded)
    "running",  # RUNNING is written
    "stopping",  # STOPPING is written
    "stopped",  # the backend stopped the workload; its end is not written yet
    "ended",  # STOPPED or FAILED is written; the backend has not released it yet
)

#: The step named in the environment (``ALLOTMENT_FAILPOINT=starting``), or "" for none.
FAILPOINT = os.environ.get("ALLOTMENT_FAILPOINT", "")

_armed: dict[str, Callable[[], None]] = {}

#: Called before this process kills itself at a failpoint: the controller's own process
#: (``process.py``) kills `allot serve` first, so that the whole service goes, as in a power cut.
on_kill: Callable[[], None] | None = None


def arm(step: str, action: Callable[[], None]) -> None:
    """Run ``action`` instead of SIGKILL when ``step`` is reached (until ``disarm``)."""
    if step not in STEPS:
        raise ValueError(f"unknown failpoint {step!r}; use one of {', '.join(STEPS)}")
    _armed[step] = action


def disarm() -> None:
    """Forget every armed step."""
    _armed.clear()


def failpoint(step: str) -> None:
    """Called at ``step``: kill this process (env var) or run the armed action, if named."""
    action = _armed.get(step)
    if action is not None:
        action()
    elif FAILPOINT == step:
        log.warning("failpoint %s: killing this process", step)
        if on_kill is not None:
            on_kill()
        os.kill(os.getpid(), signal.SIGKILL)
