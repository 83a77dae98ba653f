"""Slurm's states and reasons in the researcher's words, and as ``Observation``s.

A job is *waiting* (pending in Slurm's queue, held, requeued, its nodes booting), *alive*
(running, completing, suspended) or *ended* (every other state). Slurm's reason codes
(``Resources``, ``AssocGrpCPULimit``, ``TimeLimit``…) are kept in brackets after the words,
so an administrator can still look them up.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Sequence

from allotment.backends.base import Observation
from allotment.backends.slurm.commands import Job
from allotment.domain.quantities import format_bytes

__all__ = [
    "RUNNING",
    "WAITING",
    "ended",
    "limit_text",
    "observe",
    "requeued_words",
    "waiting_words",
]

#: Queued: Slurm has not started it (again) yet.
WAITING = frozenset(
    {
        "PENDING",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "SPECIAL_EXIT",
        "CONFIGURING",  # its nodes are booting (power saving)
        "RESV_DEL_HOLD",
    }
)
#: Started and not over: its processes may be running.
RUNNING = frozenset(
    {"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "RESIZING", "SIGNALING", "STAGE_OUT"}
)

#: Pending reasons Slurm gives, in words. Limits of associations and QOS are read by pattern.
_PENDING = {
    "None": "waiting to be scheduled",
    "Resources": "waiting for resources",
    "Priority": "waiting behind work of higher priority",
    "Dependency": "waiting for the work it depends on to end",
    "DependencyNeverSatisfied": "the work it depends on failed, so it will never start",
    "BeginTime": "waiting for its start time",
    "ReqNodeNotAvail": "a node it needs is not available (drained, down or reserved)",
    "NodeDown": "a node it needs is down",
    "PartitionDown": "its partition is down",
    "PartitionInactive": "its partition is inactive",
    "PartitionNodeLimit": "it asks for more nodes than its partition allows",
    "PartitionTimeLimit": "it asks for more time than its partition allows",
    "PartitionConfig": "its partition cannot run it as asked",
    "JobHeldUser": "held by its user",
    "JobHeldAdmin": "held by an administrator",
    "Reservation": "waiting for its reservation",
    "Licenses": "waiting for licenses",
    "InvalidAccount": "its account is not valid in Slurm",
    "InvalidQOS": "its QOS is not valid in Slurm",
    "QOSUsageThreshold": "its QOS has used what it may",
    "launch_failed_requeued_held": "held after its launch failed",
    "BadConstraints": "its constraints cannot be met",
    "Cleaning": "waiting for its previous run to be cleaned up",
    "Prolog": "its prolog is running",
    "FrontEndDown": "no front end node is available",
    "NodeBoot": "waiting for its nodes to boot",
}

_TRES = {
    "CPU": "CPUs",
    "Mem": "memory",
    "Memory": "memory",
    "Node": "nodes",
    "GRES": "GPUs",
    "Jobs": "running jobs",
    "SubmitJobs": "submitted jobs",
    "Wall": "run time",
    "Billing": "billing units",
}


def _limit_words(reason: str) -> str | None:
    """``AssocGrpCPULimit`` → "its account is at its limit of CPUs in Slurm", and kin."""
    m = re.fullmatch(
        r"(Assoc|QOS)(Grp|Max)([A-Za-z]+?)(PerUser|PerAccount|PerJob|PerNode)?"
        r"(Limit|RunMinutes|MinutesPerJob|Minutes)?",
        reason,
    )
    if m is None or (
        m.group(4) is None and m.group(5) is None and m.group(3) not in ("Jobs", "SubmitJobs")
    ):
        return None
    who, _grp, tres, per, kind = m.groups()
    what = _TRES.get(tres.removesuffix("Run"), tres.lower())
    if kind in ("RunMinutes", "Minutes", "MinutesPerJob"):
        what = f"{what}-minutes"
    whose = "its account" if who == "Assoc" else "its QOS"
    if per == "PerUser":
        whose = "its user" + ("" if who == "Assoc" else " (QOS)")
    elif per == "PerAccount":
        whose = "its account (QOS)"
    return f"{whose} is at its limit of {what} in Slurm"


def waiting_words(reason: str) -> str:
    """Why a job waits, for its researcher: "queued in Slurm: waiting for resources
    (Resources)"."""
    reason = reason or "None"
    words = _PENDING.get(reason) or _limit_words(reason) or "waiting"
    return f"queued in Slurm: {words} ({reason})"


def limit_text(minutes: int | None) -> str:
    """A time limit as Slurm writes it: ``1:00:00``, ``2-00:00:00``."""
    if minutes is None:
        return "no limit"
    days, rest = divmod(minutes, 1440)
    hours, mins = divmod(rest, 60)
    text = f"{hours}:{mins:02d}:00"
    return f"{days}-{hours:02d}:{mins:02d}:00" if days else text


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def ended(job: Job, *, memory: int | None = None, cancelled_by: str | None = None) -> Observation:
    """The end of a job no longer running, for its researcher. ``memory``: what it was
    given per node, in bytes (for out of memory); ``cancelled_by``: who cancelled it, where
    known."""
    state, code = job.state, job.exit_code
    where = f" on {job.first_node}" if job.first_node else ""
    if state == "COMPLETED" and (code or 0) == 0:
        return Observation(
            alive=False, exit_code=0, failed=False, reason="completed (exit status 0)"
        )
    if state == "OUT_OF_MEMORY":
        limit = (
            f"more than its {format_bytes(memory)}" if memory else "more memory than it was given"
        )
        return Observation(
            alive=False,
            exit_code=code if job.signal == 9 else None,
            failed=True,
            reason=f"out of memory: it used {limit}{where} and was killed (OUT_OF_MEMORY)",
        )
    if state == "TIMEOUT":
        return Observation(
            alive=False,
            exit_code=code,
            failed=True,
            reason=f"stopped at its time limit ({limit_text(job.time_limit)})",
        )
    if state == "NODE_FAIL":
        nodes = ", ".join(job.nodes) or "its node"
        node = f"node {nodes}" if len(job.nodes) <= 1 else f"one of nodes {nodes}"
        return Observation(
            alive=False,
            exit_code=None,
            failed=True,
            reason=f"{node} stopped responding (NODE_FAIL)",
        )
    if state == "PREEMPTED":
        return Observation(alive=False, exit_code=code, failed=True, reason="preempted by Slurm")
    if state == "BOOT_FAIL":
        return Observation(alive=False, failed=True, reason=f"its node failed to boot{where}")
    if state == "DEADLINE":
        return Observation(alive=False, exit_code=code, failed=True, reason="reached its deadline")
    if state == "CANCELLED" and not job.started:
        who = f" (by {cancelled_by})" if cancelled_by else ""
        return Observation(
            alive=False, failed=True, reason=f"cancelled in Slurm before it started{who}"
        )
    if job.signal:
        name = _signal_name(job.signal)
        status = f" (exit status {code})" if code is not None else ""
        reason = f"killed by {name}{status}"
        if state == "CANCELLED":
            who = f" by {cancelled_by}" if cancelled_by else ""
            reason = f"cancelled in Slurm{who}: {reason}"
        return Observation(alive=False, exit_code=code, failed=True, reason=reason)
    if state == "CANCELLED":
        who = f" (by {cancelled_by})" if cancelled_by else ""
        return Observation(
            alive=False, exit_code=code, failed=True, reason=f"cancelled in Slurm{who}"
        )
    if code:
        return Observation(
            alive=False, exit_code=code, failed=True, reason=f"exited with status {code}"
        )
    if state == "COMPLETED":  # code None: not told
        return Observation(alive=False, exit_code=code, failed=False, reason="completed")
    reason = f" ({job.reason})" if job.reason and job.reason != "None" else ""
    return Observation(
        alive=False, exit_code=code, failed=True, reason=f"ended in Slurm as {state}{reason}"
    )


def observe(
    job: Job,
    *,
    was_running: bool,
    restarts: int = 0,
    started_at: int = 0,
    ran_on: Sequence[str] = (),
    memory: int | None = None,
) -> Observation:
    """What a poll reports of ``job``. ``was_running``, ``restarts``, ``started_at``,
    ``ran_on``: what its placement says (a running placement whose job waits again, or runs
    again since a later start, was requeued; ``ran_on`` the nodes to blame); ``memory``:
    bytes per node it was given."""
    if job.state in WAITING:
        if was_running or job.restarts > restarts:
            return Observation(alive=True, requeued=True, reason=requeued_words(job, ran_on))
        return Observation(alive=True)
    if job.state in RUNNING:
        again = job.restarts > restarts or (was_running and 0 < started_at < job.start)
        if again:
            return Observation(alive=True, requeued=True, reason=requeued_words(job, ran_on))
        return Observation(alive=True)
    return ended(job, memory=memory)


def requeued_words(job: Job, ran_on: Sequence[str] = ()) -> str:
    """Why Slurm put a started job back in its queue: "requeued by Slurm: node n3 stopped
    responding" (after a node failure Slurm holds it until ``BeginTime``)."""
    if job.reason in ("NodeDown", "BeginTime", "None", ""):
        if ran_on:
            node = f"node {ran_on[0]}" if len(ran_on) == 1 else f"one of nodes {', '.join(ran_on)}"
            return f"requeued by Slurm: {node} stopped responding"
        if job.reason != "None" and job.reason:
            return "requeued by Slurm: a node it ran on stopped responding"
        return "requeued by Slurm: it was put back in its queue"
    return "requeued by Slurm: " + waiting_words(job.reason).removeprefix("queued in Slurm: ")
