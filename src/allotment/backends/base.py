"""The contract every backend implements: four verbs, no bookkeeping.

A backend knows how to start, stop and observe processes somewhere (this machine, a Slurm
cluster). It keeps no state of its own between calls: everything it needs to find a workload
again is in the *placement* it yields from ``start``, which the controller persists before
anything else can fail. Persistence, retries and reconciliation are written once, in
``allotment.controller``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from allotment.domain.ledger import Measured
from allotment.domain.resources import Resources

__all__ = [
    "Backend",
    "BackendUnavailable",
    "LaunchSpec",
    "NodeCapacity",
    "Observation",
    "Output",
    "Placement",
]

#: What a backend records about a started workload (process id, cgroup, Slurm job id…). Plain
#: JSON: the controller stores it in the workload's row.
Placement = Mapping[str, Any]


@dataclass(frozen=True)
class LaunchSpec:
    """Everything a backend needs to start one workload."""

    workload: int
    #: The JupyterHub user it runs for; the backend maps this to an identity it can run as.
    user: str
    #: Account path it is charged to (Slurm submits with it).
    account: str
    command: Sequence[str]
    resources: Resources
    #: Node chosen by the scheduler (local backend), or empty where the backend places it.
    node: str = ""
    #: Working directory; None: the user's home directory.
    workdir: str | None = None
    #: Output files; None: ``allot-<workload>.out`` and ``.err`` in the working directory.
    stdout: str | None = None
    stderr: str | None = None
    #: Variables the submitter asked for, on top of the clean environment the backend builds.
    #: Secrets travel here (a session's hub token, a Dask cluster's key): never in a repr.
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    #: Seconds before the backend may kill it; None: no limit.
    max_runtime: int | None = None
    #: What it is (``session``, ``job``, ``dask-worker``…): a backend may treat them apart
    #: (Slurm requeues a batch job after a node failure, never a session).
    kind: str = "job"
    #: The pool it runs in (a backend serving several, e.g. Slurm partitions, tells them apart).
    pool: str = ""
    #: Nodes it spans; ``resources`` are the total over all of them, split evenly per node.
    #: More than one only on a backend that places work itself (``Backend.places_itself``).
    nodes: int = 1


@dataclass(frozen=True)
class Observation:
    """What a backend sees of one workload it was asked about."""

    #: Still running (or still starting).
    alive: bool
    #: Process exit status when it ended (128 + N when killed by signal N), else None.
    exit_code: int | None = None
    #: Ended badly: non-zero exit, out of memory, killed, or vanished without a trace.
    failed: bool = False
    #: For the researcher, when it ended: "exited with status 1", "out of memory: used …".
    reason: str = ""
    #: CPU time used so far, in seconds, where the backend can tell (for the culler).
    cpu_seconds: float | None = None
    #: How a stop it was asked for went, where that is worth telling beside who asked: "it
    #: did not stop on SIGTERM and was killed after the 30 s grace period". Empty: it stopped
    #: when asked, or nobody asked (then ``reason`` tells it all).
    how_stopped: str = ""
    #: The backend itself put the running workload back in its queue (Slurm requeues a batch
    #: job whose node failed); ``reason`` says why. It is not over: the controller closes the
    #: run's charge and waits for it to start again, like a queued start.
    requeued: bool = False


class BackendUnavailable(Exception):
    """The backend cannot act or see now, for a reason that passes without anyone changing
    the workload (the file system holding its records is full, slurmctld does not answer).
    The controller tries again later, with backoff, and does not count it against the
    workload: a full disk is not the job's failure. Nothing is concluded about workloads from
    it: ``poll`` raises it rather than report work it cannot see as ended. The message says
    what is wrong, for the log and for the workloads waiting to start."""


@dataclass(frozen=True)
class NodeCapacity:
    """A node as the backend sees it (what it discovered, not what the policy declares)."""

    name: str
    #: What it can take now; nothing (``Resources()``) when it takes no work (drained, down).
    resources: Resources
    #: Device identifiers per GPU model, e.g. {"a100": ["0", "1"]}.
    gpu_devices: Mapping[str, Sequence[str]] = field(default_factory=dict)
    #: The backend's word for it: idle, mixed, allocated, draining, drained, down…
    state: str = "idle"
    #: Why it is drained or down, as the backend's administrator put it.
    reason: str = ""


@dataclass(frozen=True)
class Output:
    """Part of a workload's output file."""

    #: The file, as its owner would name it (shown to the researcher).
    path: str
    #: Bytes from the offset asked for (b"" at its end); None: the file is named in the
    #: placement but cannot be read (removed, or not readable by the workload's user).
    data: bytes | None


class Backend(ABC):
    """Start, stop and observe workloads somewhere.

    Implementations must be safe to call again after a crash at any point: ``start`` may be
    called for a workload whose earlier ``start`` was interrupted (the controller passes the
    last placement it persisted), and ``stop`` for one that already ended.
    """

    name: str = "backend"
    #: The backend places and starts work itself (Slurm): the scheduler admits work for its
    #: pools on policy alone (limits, quotas, budgets) and the backend queues what does not
    #: fit; ``start`` may then end with a *queued* placement (see ``start``).
    places_itself: bool = False

    @abstractmethod
    def start(self, spec: LaunchSpec, resume: Placement | None = None) -> AsyncIterator[Placement]:
        """Start ``spec``, yielding a placement at every step worth persisting.

        Parameters
        ----------
        spec
            The workload to start.
        resume
            The last placement persisted by an earlier, interrupted ``start`` of the same
            workload, or None. The backend must not start the workload a second time when the
            earlier attempt got it running; it yields a placement that finds it instead.

        Yields
        ------
        Placement
            First, before anything of the user's runs, what identifies the attempt (so a crash
            right after leaves a trace); last, the placement of the running workload, marked
            ``"running": True`` (the controller records it together with the RUNNING status,
            in one write).

            A backend that places work itself may end instead with a placement marked
            ``"queued": True``: accepted, waiting in the backend's own queue. It says why in
            ``"waiting"`` (the researcher's words) and may give ``"eta"`` (ISO 8601, the
            expected start) and ``"position"``. The controller keeps the workload STARTING,
            shows that, and asks ``watch`` to tell it when the workload's state changes; it
            then calls ``start`` again with that placement as ``resume``, which never submits
            a second time but ends queued again or running. A running placement may name
            ``"host"``: the address its server is reached at (a session on a Slurm node).
        """

    @abstractmethod
    async def stop(self, workload: int, placement: Placement, grace: float) -> None:
        """Stop the workload: ask politely, wait ``grace`` seconds, then force. Returns when
        nothing of it is left; a workload that already ended is not an error."""

    @abstractmethod
    async def poll(self, placements: Mapping[int, Placement]) -> dict[int, Observation]:
        """Observe many workloads at once (one ``squeue`` for Slurm, one pass over ``/proc``
        for the local machine). Every key asked about is answered."""

    async def measure(self, placements: Mapping[int, Placement]) -> dict[int, Measured]:
        """What running workloads have used so far (cumulative CPU seconds, peak memory, GPU
        utilisation), recorded beside their charges by the meter, at most once per pass.
        Optional: the default measures nothing, and a workload left out of the answer is
        simply not measured this time. Must be cheap (the meter times it apart from its
        database work) and never raise for a workload that ended meanwhile."""
        return {}

    @abstractmethod
    async def capacity(self) -> list[NodeCapacity]:
        """The nodes this backend can run on and what they have."""

    async def present(self) -> set[int]:
        """Workloads of which anything is left on the backend (processes, control groups,
        records), whatever the controller believes. The controller reaps those it has no
        active record of, so that nothing runs untracked. The default lists nothing."""
        return set()

    async def reap(self, workload: int) -> None:
        """Kill and remove everything left of a workload the controller has no active record
        of. Safe when nothing is left."""
        return None

    def watch(self, workload: int, placement: Placement, ended: Callable[[int], None]) -> None:
        """Call ``ended(workload)`` as soon as the workload ends, where the backend can tell
        (the controller also polls, so a backend that cannot need do nothing). For a queued
        placement (see ``start``): as soon as its state changes (started, ended, another
        reason or expected start)."""
        return None

    async def release(self, workload: int, placement: Placement) -> None:
        """Free what is left of an ended workload once its end is recorded (control groups,
        run records). Safe to repeat."""
        return None

    async def read_output(
        self,
        workload: int,
        placement: Placement,
        stream: Literal["stdout", "stderr"],
        offset: int,
        limit: int,
    ) -> Output | None:
        """Read part of a workload's output, on its owner's behalf.

        Parameters
        ----------
        workload
            The workload whose output is read.
        placement
            Its last persisted placement (the API process reads it from the database; the
            backend keeps no state of its own).
        stream
            Which of its two output files.
        offset, limit
            Where to start, in bytes, and at most how many bytes to return.

        Returns
        -------
        Output or None
            None: the backend keeps no such output for this workload (yet). The default
            returns None, for backends whose output is read some other way.
        """
        return None

    @staticmethod
    def private_path(path: str) -> str | None:
        """The directory each workload has privately (gone when it ends) that ``path`` lies
        under, or None. Checked at submission, before any backend is built, so that a job is
        not told to write where nothing can be found afterwards. Default: None."""
        return None

    async def close(self) -> None:
        """Release what the backend holds (connections); running workloads keep running."""
        return None
