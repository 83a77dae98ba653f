"""The Slurm backend: workloads as Slurm batch jobs, submitted as each user's POSIX account.

Slurm places and starts them (``places_itself``): ``start`` submits and ends with the job
running, or queued in Slurm with Slurm's reason, expected start and place in the queue. Every
placement carries the job's name, ``allot.<installation>.<workload>``, from the first one on,
yielded before ``sbatch`` runs: a start resumed after a crash looks the name up (``squeue``,
then ``sacct``) and never submits twice.

Everything observed comes from one shared ``squeue`` snapshot (``Snapshot``), read at most
once per ``poll_interval`` by everyone (``poll``, ``watch``, ``present``); a start waiting to
see its job run may read it sooner, at most every ``start_gap`` seconds, still shared. The
snapshot is ``squeue``'s text (``commands.squeue_argv``), not its JSON, which costs 15 times
more (3 kB a job, whatever the filters); ended jobs, and jobs gone from ``squeue`` (ended more
than ``MinJobAge`` ago), are read in full in one ``sacct`` call, each once. A controller that does not answer raises ``SlurmUnavailable`` from every verb:
nothing is ever concluded from silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from allotment.backends.base import (
    Backend,
    LaunchSpec,
    NodeCapacity,
    Observation,
    Output,
    Placement,
)
from allotment.backends.local.output import read_as
from allotment.backends.local.posix import PosixAccounts
from allotment.backends.slurm import commands as cmd
from allotment.backends.slurm.commands import Job, NodeInfo, Submission, Unanswered
from allotment.backends.slurm.names import job_name, slurm_account, workload_of
from allotment.backends.slurm.runner import SlurmError, SlurmRunner, SlurmUnavailable
from allotment.backends.slurm.states import RUNNING, WAITING, ended, observe, waiting_words
from allotment.config.models import Policy
from allotment.domain.ledger import Measured
from allotment.domain.resources import Resources
from allotment.installation import check_name

__all__ = ["PoolSettings", "SlurmBackend", "Snapshot", "slurm_backend"]

log = logging.getLogger("allotment.slurm")

MIB = 2**20
#: An expected start further away than this is Slurm's "never, as things stand" (a job behind
#: one without a time limit is expected a year later): not shown.
ETA_HORIZON = 30 * 86400
#: Seconds an end seen in ``squeue`` may wait for its ``sacct`` record before it is read from
#: ``squeue --json`` instead (slurmdbd is slow or down).
SACCT_LAG = 5.0
#: Placement keys of one state of the start, dropped when the next one is yielded.
_TRANSIENT = ("running", "queued", "waiting", "eta", "position")
#: scancel's words for a job with nothing left to signal or cancel.
_CANCEL_NOOP = (
    "invalid job id",
    "already completing",
    "job has finished",
    "no active job steps",
    "job/step already completing or completed",
    "job is pending execution",
)
#: sbatch's words for a user without an association to the account.
_NO_ASSOCIATION = ("invalid account", "account/partition")


@dataclass(frozen=True)
class PoolSettings:
    """What a Slurm pool adds to each of its jobs."""

    partition: str | None = None
    qos: str | None = None


class Snapshot:
    """Every job Slurm holds, as one ``squeue`` saw it: one call shared by all readers.

    ``get(max_age)`` answers from the last read when it is recent enough, else reads again;
    readers arriving during a read wait for it. Reads are at least ``min_gap`` seconds apart.
    """

    def __init__(self, runner: SlurmRunner, min_gap: float) -> None:
        self.runner = runner
        self.min_gap = min_gap
        self._lock = asyncio.Lock()
        #: When the last read started (monotonic), and the same in Unix seconds.
        self.taken = float("-inf")
        self.taken_wall = 0.0
        self.jobs: dict[int, Job] = {}
        self.by_name: dict[str, list[Job]] = {}
        #: Each pending job's place in its partition's queue (1: next), by Slurm's priority.
        self.positions: dict[int, int] = {}
        #: Seconds the last read took, and its parse alone.
        self.read_seconds = 0.0
        self.parse_seconds = 0.0

    async def get(self, max_age: float) -> Snapshot:
        """A snapshot no older than ``max_age`` seconds."""
        if time.monotonic() - self.taken <= max_age:
            return self
        async with self._lock:
            now = time.monotonic()
            if now - self.taken <= max_age:  # read by someone else meanwhile
                return self
            wait = self.taken + self.min_gap - now
            if wait > 0:
                await asyncio.sleep(wait)
            await self._read()
        return self

    async def newer_than(self, moment: float) -> Snapshot:
        """A snapshot read after ``moment`` (monotonic)."""
        return await self.get(max(0.0, time.monotonic() - moment - 1e-6))

    async def _read(self) -> None:
        started, wall = time.monotonic(), time.time()
        done = await self.runner.run(cmd.squeue_argv())
        t = time.monotonic()
        jobs = await asyncio.to_thread(cmd.parse_squeue_text, done.stdout)
        self.parse_seconds = time.monotonic() - t
        self.read_seconds = time.monotonic() - started
        by_id: dict[int, Job] = {}
        by_name: dict[str, list[Job]] = {}
        for job in jobs:
            by_id[job.job_id] = job
            by_name.setdefault(job.name, []).append(job)
        self.jobs, self.by_name = by_id, by_name
        self.positions = _positions(jobs)
        self.taken, self.taken_wall = started, wall


def _iso(seconds: int) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="seconds")


class SlurmBackend(Backend):
    """Run workloads as Slurm jobs.

    Parameters
    ----------
    runner
        Runs every Slurm command (``runner.SlurmRunner``).
    accounts
        Maps hub users to POSIX accounts: each job is submitted as its user's.
    installation
        The installation's name: its jobs are named ``allot.<installation>.<workload>``.
    pools
        Each Slurm pool's partition and QOS, by pool name.
    poll_interval
        Seconds between reads of Slurm's queue (``slurm.poll_interval``).
    start_wait
        How long ``start`` waits for a submitted job to run before it ends queued.
    start_gap
        The shortest time between two reads while a start waits.
    associate
        Add a user's association to the account on first use (``sacctmgr``, as root), where
        ``sbatch`` refuses the account.
    gpu_models
        Each node's GPU model as the policy declares it, where it declares one: Slurm's plain
        ``gpu:N`` on such a node is reported as N of that model.
    """

    name = "slurm"
    places_itself = True

    def __init__(
        self,
        runner: SlurmRunner,
        accounts: PosixAccounts,
        *,
        installation: str,
        pools: Mapping[str, PoolSettings],
        poll_interval: float = 2.0,
        start_wait: float = 1.0,
        start_gap: float = 0.25,
        associate: bool = True,
        gpu_models: Mapping[str, str] | None = None,
    ) -> None:
        self.runner = runner
        self.gpu_models = dict(gpu_models or {})
        self.accounts = accounts
        self.installation = check_name(installation)
        self.pools = dict(pools)
        self.poll_interval = poll_interval
        self.start_wait = start_wait
        self.snapshot = Snapshot(runner, min(start_gap, poll_interval))
        self.associate = associate
        self._nodes: dict[str, NodeInfo] = {}
        self._nodes_read = float("-inf")
        #: Workloads watched: (placement, callback, what was last seen of them).
        self._watched: dict[int, tuple[Placement, Callable[[int], None], tuple[Any, ...]]] = {}
        #: When each watched workload's state was last handed on (``ESTIMATES_EVERY``).
        self._told: dict[int, float] = {}
        self._watcher: asyncio.Task[None] | None = None
        #: Ended jobs read in full (``_ends``), by job id.
        self._ended: dict[int, Job] = {}
        #: Ended jobs whose accounting record lags, since when (monotonic).
        self._lagging: dict[int, float] = {}
        #: Grace periods of stops that had to force (workload → seconds): said once it ended.
        self._forced: dict[int, float] = {}

    # -- start -------------------------------------------------------------------------------

    def _settings(self, spec: LaunchSpec) -> PoolSettings:
        pool = spec.pool
        if pool in self.pools:
            return self.pools[pool]
        if len(self.pools) == 1:
            return next(iter(self.pools.values()))
        if not self.pools:
            return PoolSettings()
        raise ValueError(f"workload {spec.workload}: no Slurm pool named {pool!r}")

    async def start(
        self, spec: LaunchSpec, resume: Placement | None = None
    ) -> AsyncIterator[Placement]:
        placement: dict[str, Any]
        waited = self.start_wait
        if resume is not None:
            placement = {k: v for k, v in resume.items() if k not in _TRANSIENT}
            waited = 0.0 if resume.get("queued") else self.start_wait
            if placement.get("job_id") is None:
                found = await self._find(placement)
                if found is not None:
                    placement["job_id"] = found
                    yield dict(placement)
        else:
            account = await self.accounts.resolve(spec.user)
            settings = self._settings(spec)
            workdir = spec.workdir or str(account.home)
            nodes = max(1, spec.nodes)
            placement = {
                "installation": self.installation,
                "job_name": job_name(self.installation, spec.workload),
                "user": account.name,
                "uid": account.uid,
                "gid": account.gid,
                "account": slurm_account(spec.account),
                "partition": settings.partition,
                "qos": settings.qos,
                "nodes_asked": nodes,
                "memory": spec.resources.memory // nodes if spec.resources.memory else None,
                "workdir": workdir,
                "stdout": os.path.join(workdir, spec.stdout or f"allot-{spec.workload}.out"),
                "stderr": os.path.join(workdir, spec.stderr or f"allot-{spec.workload}.err"),
                "created": time.time(),
            }
            yield dict(placement)  # persisted before anything is submitted
        if placement.get("job_id") is None:
            placement["job_id"] = await self._submit(spec, placement)
            yield dict(placement)  # the job id, persisted before anything else can fail
        async for last in self._until_started(int(placement["job_id"]), placement, waited):
            yield last

    async def _until_started(
        self, job_id: int, placement: dict[str, Any], wait: float
    ) -> AsyncIterator[Placement]:
        """The running placement, or a queued one after ``wait`` seconds."""
        deadline = time.monotonic() + wait
        snap = await self.snapshot.get(self.poll_interval if wait == 0 else 0.0)
        while True:
            job = snap.jobs.get(job_id)
            if job is None and snap.taken_wall >= float(placement.get("submitted") or 0):
                job = ((await self._sacct([job_id])) or {}).get(job_id)  # ended long ago
            if job is not None and not _belongs(job, placement):
                raise SlurmError(
                    ["sbatch"],
                    0,
                    f"sbatch reported job {job_id}, which is {job.user}'s {job.name!r}, not "
                    "this workload's: nothing is done to it",
                )
            if job is not None and (
                job.state in RUNNING or (job.state not in WAITING and job.started)
            ):
                yield await self._running(placement, job)
                return
            if job is not None and job.state not in WAITING:  # ended before it started
                yield {
                    **placement,
                    "queued": True,
                    "waiting": ended(job).reason,
                    "restarts": job.restarts,
                }
                return
            if time.monotonic() >= deadline:
                yield self._queued(placement, job, snap)
                return
            snap = await self.snapshot.newer_than(snap.taken)

    async def _running(self, placement: Mapping[str, Any], job: Job) -> dict[str, Any]:
        node = job.first_node
        nodes = list(job.nodes) or [node]
        return {
            **placement,
            "running": True,
            "node": node,
            "nodes": nodes,
            "host": await self._address(node),
            "restarts": job.restarts,
            "started_at": job.start,
        }

    def _queued(
        self, placement: Mapping[str, Any], job: Job | None, snap: Snapshot
    ) -> dict[str, Any]:
        out: dict[str, Any] = {**placement, "queued": True}
        if job is None:
            out["waiting"] = waiting_words("None")
            return out
        out["waiting"] = waiting_words(job.reason)
        out["restarts"] = job.restarts
        if job.start and 0 < job.start - time.time() < ETA_HORIZON:
            out["eta"] = _iso(job.start)
        out["position"] = snap.positions.get(job.job_id, 1)
        return out

    async def _submit(self, spec: LaunchSpec, placement: dict[str, Any]) -> int:
        """Submit as the workload's user; the job id. An account sbatch refuses for want of an
        association gets one (``associate``), and the submission is tried again."""
        account = await self.accounts.resolve(spec.user)
        if account.uid != int(placement["uid"]):
            raise RuntimeError(
                f"hub user {spec.user} now maps to POSIX account {account.name}, not "
                f"{placement['user']} as when workload {spec.workload} was first started"
            )
        settings = PoolSettings(placement.get("partition"), placement.get("qos"))
        typed = await self._gpu_types(settings.partition) if spec.resources.gpus else True
        how = Submission(
            self.installation, placement["account"], settings.partition, settings.qos, typed
        )
        argv = cmd.sbatch_argv(
            spec,
            how,
            job_name=placement["job_name"],
            workdir=placement["workdir"],
            stdout=placement["stdout"],
            stderr=placement["stderr"],
        )
        script = cmd.batch_script(spec, str(account.home), account.name)
        placement["submitted"] = time.time()
        for attempt in range(6):
            try:
                done = await self.runner.run(argv, user=account, stdin=script)
                return cmd.parse_sbatch(done.stdout)
            except SlurmError as e:
                low = e.stderr.lower()
                if not (self.associate and any(w in low for w in _NO_ASSOCIATION)):
                    raise SlurmError(
                        e.argv, e.returncode, f"Slurm refused the job: {e.stderr}"
                    ) from None
                if attempt == 0:
                    await self._add_association(account.name, how.account)
                elif attempt == 5:
                    raise
                # slurmdbd passes a new association on to slurmctld in the background.
                await asyncio.sleep(0.2 * attempt)
        raise AssertionError("unreachable")

    async def _add_association(self, user: str, account: str) -> None:
        """``sacctmgr add user`` (as the service): the user may charge the account."""
        log.info("adding Slurm association of user %s to account %s", user, account)
        try:
            await self.runner.run(["sacctmgr", "-i", "add", "user", user, f"account={account}"])
        except SlurmError as e:
            if "nothing new added" in e.stderr.lower() or "already exists" in e.stderr.lower():
                return
            raise SlurmError(
                e.argv,
                e.returncode,
                f"user {user} could not be added to Slurm account {account} ({e.stderr}); is "
                "the policy mirrored into Slurm (allot config apply)?",
            ) from None

    async def _find(self, placement: Mapping[str, Any]) -> int | None:
        """The job an interrupted start submitted under the placement's name, if any: in
        ``squeue`` (read now), else in ``sacct``."""
        name = str(placement["job_name"])
        created = float(placement.get("created", 0)) - 2.0  # sacct counts whole seconds
        snap = await self.snapshot.get(0.0)
        user = str(placement.get("user") or "")
        for job in snap.by_name.get(name, []):
            if job.submit >= created and _belongs(job, placement):
                return job.job_id
        try:
            done = await self.runner.run(cmd.sacct_argv(names=[name], since=_sacct_since(created)))
        except SlurmError as e:  # no accounting: squeue was the only witness
            log.debug("sacct could not look for %s: %s", name, e)
            return None
        for job in cmd.parse_sacct(done.stdout):
            if job.name == name and job.submit >= created and (not user or job.user == user):
                return job.job_id
        return None

    # -- observe -----------------------------------------------------------------------------

    async def _sacct(self, job_ids: Iterable[int]) -> dict[int, Job] | None:
        """Jobs from accounting (one call); None without accounting."""
        ids = sorted(set(job_ids))
        if not ids:
            return {}
        try:
            done = await self.runner.run(cmd.sacct_argv(ids))
        except SlurmError as e:
            log.warning("sacct could not tell the end of jobs %s: %s", ids, e)
            return None
        return {j.job_id: j for j in cmd.parse_sacct(done.stdout)}

    async def _ends(self, job_ids: list[int], seen: Mapping[int, Job]) -> dict[int, Job]:
        """Ended jobs in full (exit status, signal, who cancelled): from ``sacct`` (one call),
        else from one ``squeue --json`` (3 kB a job, so only where accounting is off, or its
        record lags more than ``SACCT_LAG`` behind). ``seen``: what the text snapshot says of
        those it still lists; one left out of the answer is still being read (report it
        alive). Ends are final: each is read once and kept until its workload is released."""
        out = {j: self._ended[j] for j in job_ids if j in self._ended}
        ask = [j for j in job_ids if j not in out]
        accounted = False
        if ask:
            found = await self._sacct(ask)
            accounted = found is not None
            for jid, job in (found or {}).items():
                if job.state not in WAITING and job.state not in RUNNING:
                    out[jid] = job
        now = time.monotonic()
        lagging = []
        for jid in ask:
            if jid in out or jid not in seen:
                continue
            first = self._lagging.setdefault(jid, now)
            if not accounted or now - first > SACCT_LAG:
                lagging.append(jid)
        if lagging:
            done = await self.runner.run(["squeue", "--json"])
            try:
                every = {j.job_id: j for j in cmd.parse_squeue(done.stdout)}
            except Unanswered as e:
                raise SlurmUnavailable(f"Slurm does not answer ({e})") from None
            for jid in lagging:
                out[jid] = every.get(jid, seen[jid])
        for jid in ask:
            if jid in out:
                self._ended[jid] = out[jid]
                self._lagging.pop(jid, None)
        if len(self._ended) > 100_000:
            self._ended.clear()
        return out

    async def poll(self, placements: Mapping[int, Placement]) -> dict[int, Observation]:
        snap = await self.snapshot.get(self.poll_interval)
        out: dict[int, Observation] = {}
        jobs: dict[int, Job] = {}
        missing: list[int] = []
        for w, p in placements.items():
            jid = p.get("job_id")
            if jid is None:
                named = [j for j in snap.by_name.get(str(p.get("job_name")), [])]
                if named:
                    jobs[w] = named[-1]
                else:  # between the first checkpoint and sbatch's answer: still starting
                    out[w] = Observation(alive=True)
                continue
            job = snap.jobs.get(int(jid))
            if job is not None:
                jobs[w] = job
            elif snap.taken_wall < float(p.get("submitted") or 0):
                out[w] = Observation(alive=True)  # submitted after this snapshot was read
            else:
                missing.append(w)
        # The text snapshot has no exit statuses: ends are read in full (``_ends``), once.
        over = [w for w, j in jobs.items() if j.state not in WAITING and j.state not in RUNNING]
        if over or missing:
            ids = [jobs[w].job_id for w in over] + [int(placements[w]["job_id"]) for w in missing]
            full = await self._ends(ids, {jobs[w].job_id: jobs[w] for w in over})
            for w in over:
                if jobs[w].job_id in full:
                    jobs[w] = full[jobs[w].job_id]
                else:  # its end is still being read
                    del jobs[w]
                    out[w] = Observation(alive=True)
            for w in missing:
                jid = int(placements[w]["job_id"])
                if jid in full:
                    jobs[w] = full[jid]
                else:
                    out[w] = Observation(
                        alive=False,
                        failed=True,
                        reason=f"Slurm has no record of job {jid} (its end is not known)",
                    )
        for w, job in jobs.items():
            p = placements[w]
            seen = observe(
                job,
                was_running=bool(p.get("running")),
                restarts=int(p.get("restarts") or 0),
                started_at=int(p.get("started_at") or 0),
                ran_on=list(p.get("nodes") or []),
                memory=p.get("memory"),
            )
            if not seen.alive and w in self._forced:
                grace = self._forced[w]
                seen = Observation(
                    alive=False,
                    exit_code=seen.exit_code,
                    failed=seen.failed,
                    reason=seen.reason,
                    how_stopped="it did not stop on SIGTERM and was killed after the "
                    f"{grace:g} s grace period",
                )
            out[w] = seen
        return out

    async def measure(self, placements: Mapping[int, Placement]) -> dict[int, Measured]:
        """CPU seconds and peak memory of running jobs, from one ``sstat`` (Slurm samples
        them every ``JobAcctGatherFrequency``). A job that ended meanwhile is left out."""
        ids = {
            int(p["job_id"]): w
            for w, p in placements.items()
            if p.get("job_id") is not None and p.get("running")
        }
        if not ids:
            return {}
        try:
            done = await self.runner.run(cmd.sstat_argv(sorted(ids)), check=False)
        except SlurmUnavailable:
            return {}
        out: dict[int, Measured] = {}
        for jid, (cpu, peak) in cmd.parse_sstat(done.stdout).items():
            if jid in ids and (cpu is not None or peak is not None):
                out[ids[jid]] = Measured(cpu_seconds=cpu, peak_memory=peak)
        return out

    async def present(self) -> set[int]:
        """This installation's jobs Slurm holds and has not ended (pending, running)."""
        snap = await self.snapshot.get(0.0)
        found: set[int] = set()
        for job in snap.jobs.values():
            if job.state in WAITING or job.state in RUNNING:
                w = workload_of(job.name, self.installation)
                if w is not None:
                    found.add(w)
        return found

    async def reap(self, workload: int) -> None:
        name = job_name(self.installation, workload)
        snap = await self.snapshot.get(0.0)
        ids = [j.job_id for j in snap.by_name.get(name, []) if j.state in WAITING | RUNNING]
        for jid in ids:
            await self._cancel(jid, "kill")
            await self._cancel(jid, "end")
        for jid in ids:
            await self._wait_left(jid, 60.0)

    # -- watch -------------------------------------------------------------------------------

    @staticmethod
    def _signature(placement: Mapping[str, Any]) -> tuple[Any, ...]:
        if placement.get("queued"):
            return (
                "wait",
                placement.get("waiting"),
                placement.get("eta"),
                placement.get("position"),
            )
        return ("run", int(placement.get("started_at") or 0))

    def _seen(self, job: Job, snap: Snapshot) -> tuple[Any, ...] | None:
        """What a watcher compares; None: ended."""
        if job.state in WAITING:
            q = self._queued({}, job, snap)
            return ("wait", q["waiting"], q.get("eta"), q.get("position"))
        if job.state in RUNNING:
            return ("run", job.start)
        return None

    def watch(self, workload: int, placement: Placement, ended: Callable[[int], None]) -> None:
        """Call ``ended`` when the job starts, ends, or (queued) its reason, expected start or
        place changes: one task per backend reads the shared snapshot every interval."""
        if placement.get("job_id") is None:
            return
        self._watched[workload] = (placement, ended, self._signature(placement))
        self._told[workload] = time.monotonic()
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while self._watched:
            try:
                snap = await self.snapshot.get(self.poll_interval)
            except SlurmUnavailable as e:
                log.debug("watch: %s", e)
                await asyncio.sleep(self.poll_interval)
                continue
            except Exception:
                log.exception("watching Slurm jobs")
                await asyncio.sleep(self.poll_interval)
                continue
            gone = []
            for w, (p, callback, before) in list(self._watched.items()):
                job = snap.jobs.get(int(p["job_id"]))
                if job is None:
                    if snap.taken_wall >= float(p.get("submitted") or 0):
                        gone.append(w)
                    continue
                seen = self._seen(job, snap)
                if seen == before:
                    continue
                if seen is None:
                    gone.append(w)
                    continue
                if (
                    seen[:2] == before[:2]
                    and time.monotonic() - self._told.get(w, 0.0) < ESTIMATES_EVERY
                ):
                    # Only its expected start or place moved: said every ESTIMATES_EVERY, not
                    # every cycle (each is a reconcile and a write; with hundreds queued
                    # behind a moving head they took a core).
                    continue
                self._watched[w] = (p, callback, seen)
                self._told[w] = time.monotonic()
                _call(callback, w)
            if gone:
                # Their ends, read in full in one sacct for all of them, before anyone asks:
                # the reconcilers each then find theirs read (one sacct a job halved a drain).
                ended = {
                    int(p["job_id"]): job
                    for w in gone
                    for p in [self._watched[w][0]]
                    if (job := snap.jobs.get(int(p["job_id"]))) is not None
                }
                if ended:
                    with contextlib.suppress(Exception):
                        await self._ends(list(ended), ended)
            for w in gone:
                _p, callback, _ = self._watched.pop(w)
                self._told.pop(w, None)
                _call(callback, w)
            await asyncio.sleep(self.poll_interval)

    # -- stop --------------------------------------------------------------------------------

    async def _cancel(self, job_id: int, how: Literal["term", "kill", "end"]) -> None:
        """``scancel`` as the service (it acts for whoever asked). ``term``: SIGTERM to every
        step and to the batch script; ``kill``: SIGKILL to every process of the batch step,
        which ends the job (Slurm turns a SIGKILL of the whole job, and ``--full`` signals,
        into its own cancel: SIGTERM, then SIGKILL only ``KillWait`` later, 30 s by default;
        not what a grace period that ran out asks for); ``end``: cancel (a pending job leaves
        the queue)."""
        calls = {
            "term": [
                ["scancel", "--signal=TERM", str(job_id)],
                ["scancel", "--batch", "--signal=TERM", str(job_id)],
            ],
            "kill": [["scancel", "--batch", "--signal=KILL", str(job_id)]],
            "end": [["scancel", str(job_id)]],
        }[how]
        for argv in calls:
            done = await self.runner.run(argv, check=False)
            said = done.stderr.decode(errors="replace").lower()
            if done.returncode != 0 and not any(w in said for w in _CANCEL_NOOP):
                raise SlurmError(argv, done.returncode, said.strip())

    async def _state(self, job_id: int) -> str | None:
        """The job's state now, read for it alone (stops wait on one job); None: unknown."""
        found = await self._owned_state(job_id)
        return found[0] if found else None

    async def _owned_state(self, job_id: int) -> tuple[str, str, str] | None:
        """The job's state, name and user now; None: unknown."""
        done = await self.runner.run(
            ["squeue", "-h", "-t", "all", "-j", str(job_id), "-o", "%T|%j|%u"], check=False
        )
        text = done.stdout.decode(errors="replace").strip()
        parts = text.splitlines()[0].split("|") if text else []
        return (parts[0], parts[1], parts[2]) if len(parts) == 3 else None

    async def _wait_left(self, job_id: int, seconds: float) -> bool:
        """Wait until the job is neither waiting nor running (completing included)."""
        deadline = time.monotonic() + seconds
        delay = 0.05
        while True:
            state = await self._state(job_id)
            if state is None or (state not in WAITING and state not in RUNNING):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    async def stop(self, workload: int, placement: Placement, grace: float) -> None:
        jid = placement.get("job_id")
        if jid is None:
            found = await self._find(placement)
            if found is None:
                return
            jid = found
        job_id = int(jid)
        seen = await self._owned_state(job_id)
        if seen is None:
            return
        state, name, user = seen
        if name != placement.get("job_name") or (
            placement.get("user") and user != placement["user"]
        ):
            # The service signals as root: never a job that is not this workload's (a job id
            # recorded from a tampered sbatch output, or a name another user imitated).
            log.error(
                "workload %s: job %s is %s's %r, not this workload's; it is not stopped",
                workload,
                job_id,
                user,
                name,
            )
            return
        if state not in WAITING and state not in RUNNING:
            return
        if state in WAITING:
            await self._cancel(job_id, "end")
            await self._wait_left(job_id, 30.0)
            return
        await self._cancel(job_id, "term")
        if grace > 0 and await self._wait_left(job_id, grace):
            return
        if grace > 0:
            self._forced[workload] = grace
        await self._cancel(job_id, "kill")
        if not await self._wait_left(job_id, 10.0):
            await self._cancel(job_id, "end")
            await self._wait_left(job_id, 120.0)

    async def release(self, workload: int, placement: Placement) -> None:
        self._forced.pop(workload, None)
        if placement.get("job_id") is not None:
            self._ended.pop(int(placement["job_id"]), None)
        self._watched.pop(workload, None)
        self._told.pop(workload, None)

    # -- nodes -------------------------------------------------------------------------------

    async def _read_nodes(self, max_age: float) -> dict[str, NodeInfo]:
        if time.monotonic() - self._nodes_read > max_age:
            done = await self.runner.run(["sinfo", "--json"])
            try:
                nodes = cmd.parse_sinfo(done.stdout)
            except Unanswered as e:
                raise SlurmUnavailable(f"Slurm does not answer ({e})") from None
            self._nodes = {n.name: n for n in nodes}
            self._nodes_read = time.monotonic()
        return self._nodes

    async def _gpu_types(self, partition: str | None) -> bool:
        """Whether the partition's GPUs are typed by model in Slurm (``gpu:a100:4``), as the
        policy names them; False where every GPU there is plain ``gpu:N``."""
        nodes = await self._read_nodes(self.poll_interval)
        keys = {
            key
            for n in nodes.values()
            if partition is None or partition in n.partitions
            for key in n.gres
            if key.split(":")[0] == "gpu"
        }
        return not keys or any(":" in key for key in keys)

    async def _address(self, node: str) -> str:
        """The node's ``NodeAddr`` (read from ``sinfo`` when first needed)."""
        if not node:
            return ""
        nodes = self._nodes if node in self._nodes else await self._read_nodes(0.0)
        info = nodes.get(node)
        return info.address if info is not None else node

    async def capacity(self) -> list[NodeCapacity]:
        """Every node of the pools' partitions with what it has (nothing when it takes no work
        now: drained, down, not responding) and Slurm's word for its state; one ``sinfo``
        per poll interval at most, whoever asks."""
        nodes = await self._read_nodes(self.poll_interval)
        parts = {s.partition for s in self.pools.values()}
        out = []
        for n in nodes.values():
            if None not in parts and not parts & set(n.partitions):
                continue
            word, usable = node_state(n)
            gpus: dict[str, int] = {}
            for key, count in n.gres.items():
                kind, _, model = key.partition(":")
                if kind == "gpu":
                    model = model or self.gpu_models.get(n.name, "gpu")
                    gpus[model] = gpus.get(model, 0) + count
            has = Resources.of(n.cpus, n.memory * MIB, gpus) if usable else Resources()
            out.append(NodeCapacity(n.name, has, state=word, reason=n.reason))
        return out

    # -- output ------------------------------------------------------------------------------

    async def read_output(
        self,
        workload: int,
        placement: Placement,
        stream: Literal["stdout", "stderr"],
        offset: int,
        limit: int,
    ) -> Output | None:
        """Read as the job's own POSIX account, never as the service (the files live in the
        user's directories, on the file system the nodes share)."""
        path = placement.get(stream)
        if path is None:
            return None
        uid, gid = int(placement["uid"]), int(placement["gid"])
        data = await read_as(uid, gid, path, offset, limit, installation=self.installation)
        return Output(path, data)

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watcher
            self._watcher = None


def node_state(n: NodeInfo) -> tuple[str, bool]:
    """Slurm's word for a node's state, and whether it takes work now."""
    flags = set(n.flags)
    base = n.state
    if "drain" in flags:
        word = "draining" if base in ("mixed", "allocated", "completing") else "drained"
    elif "not_responding" in flags and base != "down":
        word = "not responding"
    elif "powered_down" in flags or "powering_down" in flags:
        word = "powered down"
    elif "powering_up" in flags:
        word = "powering up"
    else:
        word = base
    usable = word in ("idle", "mixed", "allocated", "completing", "powered down", "powering up")
    return word, usable


def _positions(jobs: Iterable[Job]) -> dict[int, int]:
    """Each pending job's place among the pending jobs of its partition: by Slurm's priority,
    then the earlier submitted (one sort per snapshot, whatever the number watched)."""
    queues: dict[str, list[Job]] = {}
    for job in jobs:
        if job.state == "PENDING":
            queues.setdefault(job.partition, []).append(job)
    out: dict[int, int] = {}
    for queue in queues.values():
        queue.sort(key=lambda j: (-j.priority, j.submit, j.job_id))
        out.update((j.job_id, i) for i, j in enumerate(queue, 1))
    return out


def _belongs(job: Job, placement: Mapping[str, Any]) -> bool:
    """Whether ``job`` is the one ``placement`` submitted: its name and its user (a name alone
    can be imitated by anyone who may call ``sbatch``)."""
    user = placement.get("user")
    return job.name == placement.get("job_name") and (not user or not job.user or job.user == user)


def _sacct_since(unix: float) -> str:
    """sacct's ``-S`` for a moment, in local time as sacct reads it."""
    moment = dt.datetime.fromtimestamp(max(0.0, unix - 60))
    return moment.strftime("%Y-%m-%dT%H:%M:%S")


def _call(callback: Callable[[int], None], workload: int) -> None:
    try:
        callback(workload)
    except Exception:
        log.exception("watch callback for workload %d", workload)


#: Seconds between two reports of a queued job whose expected start or place alone moved (as
#: the scheduler projects its own held work on a slower timer than it decides).
ESTIMATES_EVERY = 30.0

#: Where Slurm's commands read their configuration when nothing else says (Debian's).
DEFAULT_CONF = "/etc/slurm/slurm.conf"


def slurm_conf(policy: Policy) -> str:
    """The ``slurm.conf`` Slurm's commands read for ``policy``."""
    return policy.slurm.conf or os.environ.get("SLURM_CONF") or DEFAULT_CONF


def slurm_configured(policy: Policy) -> bool:
    """Whether this machine has the Slurm cluster the policy's Slurm pools name (its
    ``slurm.conf``): without it they wait, and nothing is mirrored or said of Slurm."""
    return os.path.exists(slurm_conf(policy))


def slurm_backend(policy: Policy, data_dir: Path, installation: str) -> SlurmBackend | None:
    """The backend for the policy's Slurm pools, or None when it has none."""
    pools = {
        name: PoolSettings(spec.partition, spec.qos)
        for name, spec in policy.pools.items()
        if spec.backend == "slurm"
    }
    if not pools:
        return None
    settings = policy.slurm
    conf = slurm_conf(policy)
    if not os.path.exists(conf):
        # No cluster configured on this machine: its pools wait, saying which backend this
        # service does not run, rather than fail every start.
        log.warning(
            "pools %s use Slurm, but there is no %s here (slurm.conf in the policy); they "
            "wait until a service with Slurm runs them",
            ", ".join(sorted(pools)),
            conf,
        )
        return None
    models = {
        node.name: next(iter(node.gpus))
        for name, spec in policy.pools.items()
        if spec.backend == "slurm"
        for node in spec.nodes
        if len(node.gpus) == 1
    }
    runner = SlurmRunner(settings.conf, settings.bin_dir, float(settings.command_timeout))
    accounts = PosixAccounts(existing=policy.identity.existing_accounts)
    return SlurmBackend(
        runner,
        accounts,
        installation=installation,
        pools=pools,
        poll_interval=float(settings.poll_interval),
        gpu_models=models,
        # A start ends queued as soon as Slurm has the job: a reconciler worker waiting for it
        # to run held one of a handful of workers for up to a second a job, and a drain of
        # 500 jobs went at a sixth of Slurm's own pace. The watch (one squeue per interval for
        # every job) says when it runs.
        start_wait=0.0,
    )
