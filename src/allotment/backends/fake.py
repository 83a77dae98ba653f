"""A fake backend for tests: workloads "run" in memory and nothing is started.

``FakeBackend`` keeps the contract of ``backends/base.py`` (the contract suite runs against it
beside the real backends, so it stays honest) while the test decides when each workload ends,
with what exit status and how much CPU it used. Its state lives in the object, as a machine's
processes live on the machine: a test that abandons one controller and starts another hands
the new one the same fake, and finds the workloads the old one left running.

A workload's command says what its fake process does; anything not listed here runs until the
test ends it (``finish``) or the controller stops it:

``true``                exits with status 0 at once
``exit N``              exits with status N at once
``kill N``              dies of signal N at once (status 128 + N, as a shell reports it)
``sleep S``             exits with status 0 after S seconds of the event loop's time
``echo WORD…``          writes its words to its standard output, then exits with status 0
``touch PATH``          creates the file PATH, then exits with status 0
``append PATH WORD…``   appends its words and a newline to the file PATH, then exits
``stubborn``            ignores the polite stop: only the forced one, after the grace, ends it
                        (and its observation says so, as the local backend's does)

Misbehaving variants, as JupyterHub's ``BadSpawner`` and dask-gateway's
``ClusterFailsDuringStart``: ``FailsToStart``, ``NeverStops``, ``Vanishes``, ``SlowPoll``,
``NoRoom``.
Not for production: nothing of the user's ever runs.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from allotment.backends.base import (
    Backend,
    BackendUnavailable,
    LaunchSpec,
    NodeCapacity,
    Observation,
    Output,
    Placement,
)
from allotment.domain.ledger import Measured

__all__ = [
    "FailsToStart",
    "FakeBackend",
    "FakeProcess",
    "NeverStops",
    "NoRoom",
    "Queues",
    "SlowPoll",
    "Vanishes",
]

#: Exit statuses of a fake process stopped politely (SIGTERM) and by force (SIGKILL).
TERMINATED = 128 + signal.SIGTERM
KILLED = 128 + signal.SIGKILL

Stream = Literal["stdout", "stderr"]


def _ended(code: int | None) -> tuple[bool, str]:
    """(failed, reason) for an exit status, in the words the local backend uses."""
    if code is None:
        return True, "vanished without an exit status"
    if code == 0:
        return False, "completed (exit status 0)"
    if 128 < code <= 128 + signal.SIGRTMAX:
        try:
            name = signal.Signals(code - 128).name
        except ValueError:
            name = f"signal {code - 128}"
        return True, f"killed by {name} (exit status {code})"
    return True, f"exited with status {code}"


@dataclass
class FakeProcess:
    """One launch of a workload, as the fake keeps it (mutable: it runs, then ends)."""

    workload: int
    #: The attempt of ``start`` that launched it (the placement's ``"attempt"``).
    attempt: int
    #: A process id unique within this fake, never reused.
    pid: int
    spec: LaunchSpec
    #: Set when it ends; None while it runs, and after it vanished.
    exit_code: int | None = None
    ended: bool = False
    #: Ended leaving no exit status behind (killed with its wrapper, a node lost).
    vanished: bool = False
    #: CPU time used so far; the test adds to it (``use_cpu``).
    cpu_seconds: float = 0.0
    #: Ignores the polite stop (``stubborn``).
    stubborn: bool = False
    #: How its stop went, when it had to be forced (``Observation.how_stopped``).
    how_stopped: str = ""
    #: Its output so far, per stream.
    output: dict[str, bytearray] = field(
        default_factory=lambda: {"stdout": bytearray(), "stderr": bytearray()}
    )

    @property
    def alive(self) -> bool:
        return not self.ended


class FakeBackend(Backend):
    """An in-memory backend for tests (a fake: nothing runs).

    Parameters
    ----------
    node
        The node name placements carry where the scheduler named none.
    nodes
        What ``capacity()`` reports; empty: nothing (the policy's nodes stand).
    watches
        Whether ``watch`` reports ends at once; False: like a backend that cannot tell (Slurm),
        only ``poll`` sees them.
    """

    name = "fake"

    def __init__(
        self, node: str = "fake", nodes: Iterable[NodeCapacity] = (), *, watches: bool = True
    ) -> None:
        self.node = node
        self.nodes = list(nodes)
        self.watches = watches
        #: The latest launch of each workload, until it is released or reaped.
        self.processes: dict[int, FakeProcess] = {}
        #: Workloads for which a first placement was handed out (the run directories of the
        #: local backend): the last attempt of each, until released or reaped.
        self.attempts: dict[int, int] = {}
        #: How many times each workload was launched, ever: a resumed start must not add one.
        self.launches: Counter[int] = Counter()
        #: Every workload reaped, in order (what recovery found that nobody accounted for).
        self.reaped: list[int] = []
        #: The latest launch of each workload, kept after its release: its output files stay,
        #: as on a real machine, for ``read_output``.
        self._launched: dict[int, FakeProcess] = {}
        self._pids = itertools.count(1000)
        #: What ``measure`` reports of each running workload; a test sets it.
        self.measured: dict[int, Measured] = {}
        self._watchers: dict[int, list[Callable[[int], None]]] = {}

    # -- helpers for tests ------------------------------------------------------------------

    def running(self) -> list[int]:
        """The workloads whose fake process is alive, in id order."""
        return sorted(w for w, p in self.processes.items() if p.alive)

    def finish(self, workload: int, exit_code: int = 0) -> None:
        """End the workload's process with ``exit_code``, as if it exited."""
        self._end(self.processes[workload], exit_code)

    def vanish(self, workload: int) -> None:
        """End the workload's process leaving no exit status (its node was lost)."""
        self._end(self.processes[workload], None, vanished=True)

    def use_cpu(self, workload: int, seconds: float) -> None:
        """The workload used ``seconds`` more CPU time (the culler reads it through ``poll``)."""
        self.processes[workload].cpu_seconds += seconds

    def drop_watches(self) -> None:
        """Forget every ``watch``: the process that asked died (its pidfds closed with it)."""
        self._watchers.clear()

    def write_output(self, workload: int, stream: Stream, data: bytes) -> None:
        """The workload wrote ``data`` to one of its output files."""
        self._launched[workload].output[stream] += data

    # -- start ------------------------------------------------------------------------------

    async def start(
        self, spec: LaunchSpec, resume: Placement | None = None
    ) -> AsyncIterator[Placement]:
        wid = spec.workload
        attempt = 1
        if resume is not None:
            found = self.processes.get(wid)
            if found is not None and found.attempt == int(resume["attempt"]):
                # The earlier attempt got it launched: find it, launch nothing.
                yield {**resume, "pid": found.pid, "running": True}
                return
            attempt = int(resume["attempt"]) + 1
        self.attempts[wid] = attempt
        workdir = spec.workdir or "/home/" + spec.user
        placement: dict[str, Any] = {
            "node": spec.node or self.node,
            "attempt": attempt,
            "stdout": os.path.join(workdir, spec.stdout or f"allot-{wid}.out"),
            "stderr": os.path.join(workdir, spec.stderr or f"allot-{wid}.err"),
        }
        yield placement  # persisted before anything "runs"
        process = self._launch(spec, attempt)
        yield {**placement, "pid": process.pid, "running": True}

    def _launch(self, spec: LaunchSpec, attempt: int) -> FakeProcess:
        """Make the fake process and carry out its command's first steps."""
        p = FakeProcess(spec.workload, attempt, next(self._pids), spec)
        self.processes[spec.workload] = self._launched[spec.workload] = p
        self.launches[spec.workload] += 1
        verb, *args = list(spec.command) or [""]
        if verb == "true":
            self._end(p, 0)
        elif verb == "exit":
            self._end(p, int(args[0]))
        elif verb == "kill":
            self._end(p, 128 + int(args[0]))
        elif verb == "sleep":
            loop = asyncio.get_running_loop()
            loop.call_later(float(args[0]), self._end, p, 0)
        elif verb == "echo":
            p.output["stdout"] += (" ".join(args) + "\n").encode()
            self._end(p, 0)
        elif verb == "touch":
            Path(args[0]).touch()
            self._end(p, 0)
        elif verb == "append":
            with open(args[0], "a") as f:
                f.write(" ".join(args[1:]) + "\n")
            self._end(p, 0)
        elif verb == "stubborn":
            p.stubborn = True
        return p

    def _end(self, p: FakeProcess, code: int | None, *, vanished: bool = False) -> None:
        if p.ended:
            return
        p.ended, p.exit_code, p.vanished = True, code, vanished
        for ended in self._watchers.pop(p.workload, []):
            ended(p.workload)

    # -- observe ----------------------------------------------------------------------------

    async def measure(self, placements: Mapping[int, Placement]) -> dict[int, Measured]:
        return {w: self.measured[w] for w in placements if w in self.measured}

    async def poll(self, placements: Mapping[int, Placement]) -> dict[int, Observation]:
        return {w: self._observe(w, p) for w, p in placements.items()}

    def _observe(self, workload: int, placement: Placement) -> Observation:
        p = self.processes.get(workload)
        if p is None or p.attempt != placement.get("attempt", p.attempt):
            # Between the first checkpoint and the launch: still starting, while the attempt
            # is on record. Otherwise nothing is left of it: gone without a status.
            if "pid" not in placement and self.attempts.get(workload) == placement.get("attempt"):
                return Observation(alive=True)
            return Observation(alive=False, failed=True, reason=_ended(None)[1])
        if p.alive:
            return Observation(alive=True, cpu_seconds=p.cpu_seconds)
        failed, reason = _ended(p.exit_code)
        return Observation(
            alive=False,
            exit_code=p.exit_code,
            failed=failed,
            reason=reason,
            how_stopped=p.how_stopped,
        )

    async def present(self) -> set[int]:
        return set(self.attempts) | set(self.processes)

    def watch(self, workload: int, placement: Placement, ended: Callable[[int], None]) -> None:
        if not self.watches:
            return
        p = self.processes.get(workload)
        if p is None or p.ended:
            ended(workload)
            return
        self._watchers.setdefault(workload, []).append(ended)

    async def capacity(self) -> list[NodeCapacity]:
        return list(self.nodes)

    async def read_output(
        self,
        workload: int,
        placement: Placement,
        stream: Stream,
        offset: int,
        limit: int,
    ) -> Output | None:
        path = placement.get(stream)
        if path is None:
            return None
        p = self._launched.get(workload)
        if p is None or p.attempt != placement.get("attempt"):
            return Output(str(path), None)  # nothing was launched from this placement
        return Output(str(path), bytes(p.output[stream][offset : offset + max(limit, 0)]))

    # -- stop -------------------------------------------------------------------------------

    async def stop(self, workload: int, placement: Placement, grace: float) -> None:
        p = self.processes.get(workload)
        if p is None or p.ended:
            return
        if p.stubborn:
            await asyncio.sleep(grace)
            if grace > 0:  # with none, nothing was given time to stop (as the local backend)
                p.how_stopped = (
                    f"it did not stop on SIGTERM and was killed after the {grace:g} s grace period"
                )
            self._end(p, KILLED)
        else:
            self._end(p, TERMINATED)

    async def reap(self, workload: int) -> None:
        self.reaped.append(workload)
        self._forget(workload)

    async def release(self, workload: int, placement: Placement) -> None:
        self._forget(workload)

    def _forget(self, workload: int) -> None:
        """Kill what is left of the workload and drop its records."""
        p = self.processes.pop(workload, None)
        if p is not None:
            self._end(p, KILLED)
        self.attempts.pop(workload, None)
        self._watchers.pop(workload, None)


class FailsToStart(FakeBackend):
    """Every launch fails after the first placement (a launcher that cannot run)."""

    def __init__(self, *args: Any, error: str = "the fake launcher failed", **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.error = error
        #: Launches tried, all failed.
        self.failures = 0

    def _launch(self, spec: LaunchSpec, attempt: int) -> FakeProcess:
        self.failures += 1
        raise RuntimeError(self.error)


class NeverStops(FakeBackend):
    """Ignores ``stop``: the workload goes on running (only ``release`` or ``reap`` end it)."""

    async def stop(self, workload: int, placement: Placement, grace: float) -> None:
        return None


class Vanishes(FakeBackend):
    """Every workload vanishes right after its launch: gone, without an exit status."""

    def _launch(self, spec: LaunchSpec, attempt: int) -> FakeProcess:
        p = super()._launch(spec, attempt)
        self._end(p, None, vanished=True)
        return p


class SlowPoll(FakeBackend):
    """``poll`` waits until the test opens ``gate`` (a backend whose status query hangs)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.gate = asyncio.Event()
        #: Polls waiting at the gate now.
        self.waiting = 0

    async def poll(self, placements: Mapping[int, Placement]) -> dict[int, Observation]:
        self.waiting += 1
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1
        return await super().poll(placements)


class NoRoom(FakeBackend):
    """Starts nothing until the test says there is room (``room = True``): the file system
    holding its records is full, so each start raises ``BackendUnavailable`` before its first
    placement, as the local backend's does."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.room = False
        #: Starts refused for want of room.
        self.refusals = 0

    async def start(
        self, spec: LaunchSpec, resume: Placement | None = None
    ) -> AsyncIterator[Placement]:
        if not self.room:
            self.refusals += 1
            # Caused by ENOSPC, as the local backend's is: not the database's disk.
            raise BackendUnavailable("the fake's disk is full") from OSError(
                errno.ENOSPC, os.strerror(errno.ENOSPC)
            )
        async for placement in super().start(spec, resume):
            yield placement


class Queues(FakeBackend):
    """A backend that places work itself, as Slurm does (``places_itself``): a start ends
    *queued* in the fake's own queue, and the workload runs when the test says where
    (``begin``). The test may also requeue a running one, as Slurm requeues a batch job whose
    node failed (``requeue``), cancel a queued one behind the controller's back
    (``cancel_queued``) and make the fake's controller stop answering (``down``)."""

    places_itself = True

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        #: Workloads waiting in the fake's queue, by id.
        self.queued: dict[int, LaunchSpec] = {}
        #: Why each requeued workload was put back in the queue.
        self.requeued: dict[int, str] = {}
        #: The reason queued work shows, and its expected start (ISO 8601) if any.
        self.waiting = "queued in the fake: waiting for resources"
        self.eta: str | None = None
        #: Its controller does not answer: start and poll raise ``BackendUnavailable``.
        self.down = False
        #: Submissions to its queue, ever: a resumed start must not add one.
        self.submissions: Counter[int] = Counter()
        self._nodes: dict[int, str] = {}

    def _check(self) -> None:
        if self.down:
            raise BackendUnavailable("waiting for the fake: its controller does not answer")

    def _queued(self, placement: Placement) -> dict[str, Any]:
        out = {**placement, "queued": True, "running": False, "waiting": self.waiting}
        if self.eta:
            out["eta"] = self.eta
        out.pop("pid", None)
        return out

    async def start(
        self, spec: LaunchSpec, resume: Placement | None = None
    ) -> AsyncIterator[Placement]:
        self._check()
        wid = spec.workload
        if resume is not None and "job" in resume:
            p = self.processes.get(wid)
            if wid in self.queued:
                yield self._queued(resume)
                return
            if p is None:
                yield self._queued(resume)  # gone before it started: ``poll`` tells its end
                return
            # It started (and may have ended since: it ran all the same).
            node = self._nodes[wid]
            found = {**resume, "pid": p.pid, "node": node, "host": f"{node}.fake"}
            found.pop("waiting", None)
            yield {**found, "queued": False, "running": False}
            yield {**found, "queued": False, "running": True}
            return
        self.attempts[wid] = 1
        workdir = spec.workdir or "/home/" + spec.user
        placement: dict[str, Any] = {
            "attempt": 1,
            "stdout": os.path.join(workdir, spec.stdout or f"allot-{wid}.out"),
            "stderr": os.path.join(workdir, spec.stderr or f"allot-{wid}.err"),
        }
        yield placement  # persisted before it is submitted
        self.queued[wid] = spec
        self.submissions[wid] += 1
        yield self._queued({**placement, "job": wid})

    def begin(self, workload: int, node: str = "n1") -> None:
        """The fake's scheduler starts a queued workload on ``node``."""
        spec = self.queued.pop(workload)
        self.requeued.pop(workload, None)
        self._nodes[workload] = node
        self._launch(spec, 1)
        self._changed(workload)

    def requeue(self, workload: int, reason: str) -> None:
        """Put a running workload back in the queue (its node failed)."""
        p = self.processes.pop(workload)
        p.ended = True  # this run is over; the workload is not
        self.queued[workload] = p.spec
        self.requeued[workload] = reason
        self._changed(workload)

    def cancel_queued(self, workload: int) -> None:
        """A queued workload is cancelled in the fake behind the controller's back."""
        self.queued.pop(workload)
        self.attempts.pop(workload, None)
        self._changed(workload)

    def _changed(self, workload: int) -> None:
        for call in self._watchers.pop(workload, []):
            call(workload)

    async def poll(self, placements: Mapping[int, Placement]) -> dict[int, Observation]:
        self._check()
        return await super().poll(placements)

    def _observe(self, workload: int, placement: Placement) -> Observation:
        if workload in self.queued:
            reason = self.requeued.get(workload, "")
            return Observation(alive=True, requeued=bool(reason), reason=reason)
        return super()._observe(workload, placement)

    def watch(self, workload: int, placement: Placement, ended: Callable[[int], None]) -> None:
        if placement.get("queued"):
            if workload in self.queued:
                self._watchers.setdefault(workload, []).append(ended)
            else:
                ended(workload)  # it changed before the watch began: started, or gone
            return
        super().watch(workload, placement, ended)

    async def stop(self, workload: int, placement: Placement, grace: float) -> None:
        if self.queued.pop(workload, None) is not None:
            self.attempts.pop(workload, None)
            return
        await super().stop(workload, placement, grace)

    def _forget(self, workload: int) -> None:
        self.queued.pop(workload, None)
        super()._forget(workload)
