"""The local backend: workloads as processes of this machine, each user as their own POSIX
account, each workload in its own cgroups, GPUs pinned.

Everything needed to find a workload again lives in its placement and in its run directory
(``<state>/run/w<id>.<attempt>``, mode 0700, owned by the service): the wrapper's pid, the GPUs
it was given and, once it ended, its exit status. Processes are detached from the service
(``setsid -f``), so they outlive its restarts and are found again from their placement.

What a workload has outside ``<state>`` carries the installation's name (``installation``):
its control groups (``allotment/<installation>/w<id>``, see ``cgroups``) and its private /tmp
(``<tmp base>/<installation>/w<id>.<attempt>``), since a pool's ``tmp_dir`` and the cgroup
hierarchy are shared by every installation on the machine. The placement records the name
(``"installation"``), and so does the run directory (file ``installation``), so a workload is
found under the name it started with; one without (started by a version before installations
were named) is found under the old names, ``allotment/w<id>`` and ``<tmp base>/w<id>.<n>``.
``present`` lists and ``reap`` removes only what is this installation's: its run directories,
its groups and its /tmp directories, never another installation's (nor an old-named group no
run directory of this installation accounts for: whose it is cannot be told).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import shutil
import signal
import stat
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, Literal, NoReturn

from allotment.backends.base import (
    Backend,
    BackendUnavailable,
    LaunchSpec,
    NodeCapacity,
    Observation,
    Output,
    Placement,
)
from allotment.backends.local import gpus as gpu
from allotment.backends.local import space
from allotment.backends.local.cgroups import LEGACY, Cgroups, Limits, prefix_of
from allotment.backends.local.output import read_as
from allotment.backends.local.posix import PosixAccount, PosixAccounts
from allotment.backends.local.process import (
    ROOT_ENVIRONMENT,
    SETUP_FAILURES,
    USER_PART,
    WRAPPER,
    alive,
    environment_script,
    private_mounts,
    program,
    start_time,
    under_private,
)
from allotment.backends.local.reasons import setup_failure
from allotment.domain.ledger import Measured
from allotment.domain.quantities import format_bytes
from allotment.domain.resources import Resources
from allotment.installation import check_name

__all__ = ["LocalBackend"]

log = logging.getLogger("allotment.local")

USER_PATH = "/usr/local/bin:/usr/bin:/bin"

#: Every signal the launcher may set back to its default: Python ignores SIGPIPE and SIGXFSZ,
#: and what a process ignores, the programs it runs ignore too.
DEFAULT_SIGNALS = tuple(
    s
    for s in signal.valid_signals()
    if s < signal.SIGRTMIN and s not in (signal.SIGKILL, signal.SIGSTOP)
)


def _ended(code: int | None, command_ran: bool = False) -> tuple[bool, str]:
    """(failed, reason) for an exit status; ``command_ran``: the status is the command's own,
    even where it equals one of the launcher's set-up failures. None: the launcher, which
    records it, ended without doing so; what is known of why is said, and nothing more (its
    place is reserved at the start, so a full disk is not the cause for a run that started
    with it; it can be for one started before space was reserved, or where the file system
    could not allocate ahead: ``_unrecorded`` says so where it is full)."""
    if code is None:
        return True, (
            "outcome unknown: it ended without an exit status recorded (its launcher, which "
            "records it, was killed)"
        )
    if code == 0:
        return False, "completed (exit status 0)"
    if code in SETUP_FAILURES and not command_ran:
        return True, f"{SETUP_FAILURES[code]} (exit status {code})"
    if 128 < code <= 128 + signal.SIGRTMAX:  # the shell's 128 + N for a signal N
        try:
            name = signal.Signals(code - 128).name
        except ValueError:
            name = f"signal {code - 128}"
        return True, f"killed by {name} (exit status {code})"
    return True, f"exited with status {code}"


class LocalBackend(Backend):
    """Run workloads on this machine.

    Parameters
    ----------
    state_dir
        The service's own directory for run records; created with mode 0700.
    node
        This machine's name as the policy's pool declares it.
    declared
        What the policy says the node has; GPUs are pinned from its counts, numbered in model
        order, unless ``inventory`` names the devices.
    cgroups
        The cgroup driver (``cgroups.detect()``), or None to run without limits (logged); the
        backend works below ``allotment/<installation>`` of its hierarchy.
    accounts
        Maps hub users to POSIX accounts (``PosixAccounts``).
    installation
        The installation's name (``allotment.installation``): carried by everything this
        backend makes outside ``state_dir`` (control groups, private /tmp directories), so two
        installations on one machine never touch each other's workloads.
    tmp_base
        Where each workload's private /tmp is made (Slurm's ``BasePath``), in a directory
        named after the installation; None: ``tmp`` in ``state_dir``. Best on a file system of
        its own: scratch files that fill it must not fill the one holding the database.
    """

    name = "local"

    def __init__(
        self,
        state_dir: Path,
        node: str,
        declared: Resources,
        cgroups: Cgroups | None,
        accounts: PosixAccounts,
        *,
        installation: str,
        inventory: gpu.Inventory | None = None,
        pids_max: int = 4096,
        tmp_base: Path | None = None,
    ) -> None:
        self.runs = state_dir / "run"
        self.runs.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(state_dir, 0o700)
        self.installation = check_name(installation)
        #: Where every installation using it makes its workloads' private /tmp directories.
        self._scratch_base = tmp_base if tmp_base is not None else state_dir / "tmp"
        #: Whether ``_scratch_base`` is this installation's alone (its own ``state_dir``'s).
        self._own_base = tmp_base is None
        #: This installation's private /tmp directories, ``w<id>.<attempt>`` like run
        #: directories.
        self.scratch = self._scratch_base / installation
        self.node = node
        self.declared = declared
        #: The driver for this installation's groups; others' (older names) via ``_groups_of``.
        self.cgroups = cgroups.at(prefix_of(installation)) if cgroups is not None else None
        self.accounts = accounts
        self.inventory = inventory if inventory is not None else gpu.declared(declared.gpus)
        self.pids_max = pids_max
        self._gpu_lock = asyncio.Lock()
        self._watched: set[int] = set()
        #: Programs the launcher runs as root, by absolute path (never found through PATH).
        self._setpriv = program("setpriv") if accounts.isolated else ""
        #: As root, every workload gets a private /tmp and /dev/shm in a mount namespace.
        self._private = (program("unshare"), program("mount")) if accounts.isolated else None
        if self._private is not None:
            for d in (self._scratch_base, self.scratch):
                d.mkdir(parents=True, exist_ok=True, mode=0o700)
                _own_directory(d)
                os.chmod(d, 0o700)
            if self.scratch.stat().st_dev == state_dir.stat().st_dev:
                log.info(
                    "workloads' private /tmp is on the file system of the service's state (%s): "
                    "a workload that fills it fills that; set the pool's tmp_dir to a file "
                    "system of its own",
                    self.scratch,
                )
        _keep_descriptors_from_workloads()
        if cgroups is None:
            log.warning(
                "no writable cgroup hierarchy: workloads run without CPU, memory or process "
                "limits, and a process that leaves its session can outlive a stop"
            )
        elif cgroups.version == 2 and any(self.inventory.values()):
            log.warning("cgroup v2: GPUs are pinned with CUDA_VISIBLE_DEVICES only")

    # -- start ------------------------------------------------------------------------------

    async def start(
        self, spec: LaunchSpec, resume: Placement | None = None
    ) -> AsyncIterator[Placement]:
        attempt = 1
        if resume is not None:
            claimed = await self._claim(Path(resume["run"]))
            if claimed is not None:  # the earlier attempt got going: find it, start nothing
                pid, started = claimed
                yield {**resume, "pid": pid, "started": started, "running": True}
                return
            attempt = int(resume["attempt"]) + 1
        account = await self.accounts.resolve(spec.user)
        run = self.runs / f"w{spec.workload}.{attempt}"
        if run.exists():
            # Made by an attempt whose first placement was never stored (the service died
            # first), so nothing was launched from it: claim it dead and make it afresh.
            await self._claim(run)
            shutil.rmtree(run, ignore_errors=True)
        async with self._gpu_lock:
            devices = self._prepare(spec, run)
        workdir = spec.workdir or str(account.home)
        placement: dict[str, Any] = {
            "node": spec.node or self.node,
            "attempt": attempt,
            "run": str(run),
            "user": account.name,
            "uid": account.uid,
            "gid": account.gid,
            "gpus": devices,
            "cgroup": self.cgroups.version if self.cgroups else 0,
            "installation": self.installation,
            "workdir": workdir,
            # Relative paths are relative to the working directory, as in Slurm.
            "stdout": os.path.join(workdir, spec.stdout or f"allot-{spec.workload}.out"),
            "stderr": os.path.join(workdir, spec.stderr or f"allot-{spec.workload}.err"),
        }
        yield placement  # persisted before anything of the user's can run
        procs = self._groups(spec, devices)
        ready, told = os.pipe2(os.O_CLOEXEC)
        try:
            launched = self._spawn(spec, account, run, procs, devices, placement, (told, ready))
        except BaseException:
            os.close(ready)
            raise
        finally:
            os.close(told)
        await _readable(ready, timeout=30.0)  # the launcher joined its groups, or it ended
        pid = await self._wait_for_pid(run, launched=launched)
        started = start_time(pid)
        if self.cgroups is not None:
            # From the moment the launcher is in its groups, every process of the workload is:
            # only then can a stop find them all. The pipe normally said so already; this
            # checks it, and waits only if the pipe's wait timed out.
            delay = 0.001
            while not (run / "joined").exists() and alive(pid, started):
                await asyncio.sleep(delay)
                delay = min(delay * 1.2, 0.02)
        yield {**placement, "pid": pid, "started": started, "running": True}

    def _prepare(self, spec: LaunchSpec, run: Path) -> list[str]:
        """Make the new run directory with everything the launcher needs, the workload's GPUs
        assigned and recorded in it. Every write in the data directory an attempt needs
        happens here, before anything of the user's runs, or has its room reserved here (the
        exit status): a full disk delays a start (``BackendUnavailable``) and never falsifies
        an end. The launcher's own ``pid`` is the exception: a disk that fills in the few
        milliseconds between this and its claim is seen when it ends without one
        (``_unclaimed``), and delays that start too."""
        devices = gpu.assign(self.inventory, spec.resources.gpus, self._gpus_in_use())
        if devices is None:
            raise RuntimeError(
                f"workload {spec.workload} asks for {spec.resources.describe()} but those "
                "GPUs are in use here"
            )
        tmp = self.scratch / run.name
        try:
            run.mkdir(mode=0o700)
            (run / "installation").write_text(self.installation)  # for ``reap``
            # The user's part says in ``started`` that its set-up is done, the launcher in
            # ``exit`` how the command ended: appends into blocks taken now.
            space.reserve(run / "started")
            space.reserve(run / "exit")
            if self._private is not None:
                # The workload's /tmp: reachable only inside its own mount namespace (the base
                # is the service's, 0700), removed when the workload is released.
                remove_tree(tmp)  # of an attempt that never started
                tmp.mkdir()
                os.chmod(tmp, 0o1777)
                memory = max(spec.resources.memory, 2**20)
                (run / "fstab").write_text(private_mounts(str(tmp), memory))
            (run / "gpus.json").write_text(json.dumps(devices))
        except OSError as e:
            if not space.no_space(e):
                raise
            shutil.rmtree(run, ignore_errors=True)  # nothing was launched from it
            remove_tree(tmp)
            raise BackendUnavailable(
                space.full_disk(self.runs.parent, f"no workload can start ({e.strerror})")
            ) from e
        return devices

    def _groups(self, spec: LaunchSpec, devices: list[str]) -> list[Path]:
        """The workload's cgroups with its limits; their ``cgroup.procs`` files."""
        if self.cgroups is None:
            return []
        limits = Limits(
            spec.resources.millicpus,
            spec.resources.memory,
            self.pids_max,
            gpu.device_numbers(self.inventory, devices),
        )
        return self.cgroups.create(spec.workload, limits)

    def _environment(
        self, spec: LaunchSpec, account: PosixAccount, devices: list[str]
    ) -> dict[str, str]:
        """What the workload sees: a clean environment, nothing of the service's."""
        threads = str(max(1, math.ceil(spec.resources.millicpus / 1000)))
        env = {
            "HOME": str(account.home),
            "USER": account.name,
            "LOGNAME": account.name,
            "SHELL": "/bin/bash",
            "PATH": USER_PATH,
            "LANG": "C.UTF-8",
            "ALLOT_WORKLOAD_ID": str(spec.workload),
            "ALLOT_ACCOUNT": spec.account,
            "ALLOT_CPUS": f"{spec.resources.cpus:g}",
            "ALLOT_MEMORY": str(spec.resources.memory),
            "ALLOT_NODE": spec.node or self.node,
            # Thread pools size themselves by the machine's cores, not the workload's.
            "OMP_NUM_THREADS": threads,
            "OPENBLAS_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            "CUDA_VISIBLE_DEVICES": ",".join(devices),
        }
        env.update(spec.env)
        return env

    def _spawn(
        self,
        spec: LaunchSpec,
        account: PosixAccount,
        run: Path,
        procs: list[Path],
        devices: list[str],
        placement: Mapping[str, Any],
        pipe: tuple[int, int],
    ) -> int:
        """Start the launcher; ``pipe`` (write end, read end) becomes its fds 3 and 4, the
        workload's environment its fd 5. The launcher itself gets ``ROOT_ENVIRONMENT`` only.
        Returns its pid (``unshare`` execs it: the same process)."""
        workdir, out, err = placement["workdir"], placement["stdout"], placement["stderr"]
        drop = ""
        if self.accounts.isolated:
            drop = (
                f"{self._setpriv} --reuid={account.uid} --regid={account.gid} --init-groups "
                "--inh-caps=-all --"
            )
        launcher = ["/bin/sh", "-c", WRAPPER, "allot-wrapper"]
        mount = mounts = ""
        if self._private is not None:
            unshare, mount = self._private
            # slave: mounts the machine makes later (autofs, NFS homes) still reach it.
            launcher = [unshare, "--mount", "--ipc", "--propagation", "slave", "--", *launcher]
            mounts = str(run / "fstab")  # written by ``_prepare``
        env = os.memfd_create("allot-env", os.MFD_CLOEXEC)
        try:
            script = environment_script(self._environment(spec, account, devices))
            while script:
                script = script[os.write(env, script) :]
            # posix_spawn (vfork + exec) in a new session: the launcher leads its own session
            # and process group. Forking this large process, as subprocess would, costs
            # milliseconds.
            files: list[tuple[Any, ...]] = [
                (os.POSIX_SPAWN_OPEN, fd, "/dev/null", os.O_RDONLY if fd == 0 else os.O_WRONLY, 0)
                for fd in (0, 1, 2)
            ]
            files += [
                (os.POSIX_SPAWN_DUP2, pipe[0], 3),
                (os.POSIX_SPAWN_DUP2, pipe[1], 4),
                (os.POSIX_SPAWN_DUP2, env, 5),
            ]
            return os.posix_spawn(
                launcher[0],
                [
                    *launcher,
                    str(run),
                    ":".join(str(p) for p in procs),
                    drop,
                    mount,
                    mounts,
                    "/bin/sh",
                    "-c",
                    USER_PART,
                    "allot-job",
                    out,
                    err,
                    workdir,
                    *spec.command,
                ],
                ROOT_ENVIRONMENT,
                file_actions=files,
                setsid=True,
                setsigdef=DEFAULT_SIGNALS,
                setsigmask=(),
            )
        finally:
            os.close(env)

    def _unclaimed(self, run: Path) -> NoReturn:
        """The launcher this start spawned ended without claiming its run (it records its pid
        first of all, before anything of the user's): the disk filled since ``_prepare``, or
        the run directory went. Nothing ran, so the run goes, and the start fails at once
        (the next one makes a new attempt) instead of waiting for a pid that never comes."""
        shutil.rmtree(run, ignore_errors=True)
        remove_tree(self.scratch / run.name)
        if space.full(run.parent):
            raise BackendUnavailable(
                space.full_disk(
                    self.runs.parent,
                    "no workload can start (its launcher could not record its pid)",
                )
            )
        raise RuntimeError(f"the launcher of {run} ended before it could record its pid")

    async def _wait_for_pid(
        self, run: Path, timeout: float = 30.0, *, launched: int | None = None
    ) -> int:
        """The pid the launcher recorded in ``run``; ``launched``: the launcher, where this
        process spawned it (its end without a pid is then seen at once: ``_unclaimed``)."""
        deadline = time.monotonic() + timeout
        delay = 0.001
        while True:
            pid = _read_pid(run)
            if pid is not None:
                return pid
            if launched is not None and _exited(launched):
                # Read again: it may have recorded its pid just before it ended.
                if (pid := _read_pid(run)) is not None:
                    return pid
                self._unclaimed(run)
            if time.monotonic() > deadline:
                raise TimeoutError(f"the launcher in {run} did not start within {timeout:g} s")
            await asyncio.sleep(delay)
            # The launcher writes its pid within milliseconds: poll finely at first.
            delay = 0.001 if time.monotonic() < deadline - timeout + 0.1 else 0.05

    async def _claim(self, run: Path) -> tuple[int, int | None] | None:
        """After a crash during ``start``: (pid, start time) when the attempt's launcher got
        going, else None, having made sure it never will (its claim is taken)."""
        try:
            fd = os.open(run / "pid", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            pid = await self._wait_for_pid(run, timeout=5.0)
            return pid, start_time(pid)
        except FileNotFoundError:
            return None  # the run directory was never made
        os.close(fd)
        shutil.rmtree(run, ignore_errors=True)  # and its GPUs are free again
        return None

    def _gpus_in_use(self) -> set[str]:
        used: set[str] = set()
        for run in self.runs.iterdir():
            if _exit_status(run) is not None:
                continue
            try:
                used.update(json.loads((run / "gpus.json").read_text()))
            except (OSError, ValueError):
                continue
        return used

    # -- observe ----------------------------------------------------------------------------

    async def poll(self, placements: Mapping[int, Placement]) -> dict[int, Observation]:
        return {w: self._observe(w, p) for w, p in placements.items()}

    async def measure(self, placements: Mapping[int, Placement]) -> dict[int, Measured]:
        """CPU time and peak memory from each workload's control groups (cgroup v2
        ``cpu.stat`` usage_usec and ``memory.peak``; v1 ``cpuacct.usage`` and
        ``memory.max_usage_in_bytes``). GPU utilisation is not measured: that needs
        ``nvidia-smi``, which no machine this backend has run on so far had."""
        out: dict[int, Measured] = {}
        for w, placement in placements.items():
            groups = self._groups_of(placement)
            if groups is None:
                continue
            try:
                cpu = groups.cpu_seconds(w)
                peak = groups.memory(w).peak
            except OSError:  # it ended meanwhile and its groups went with it
                continue
            if cpu is not None or peak is not None:
                out[w] = Measured(cpu_seconds=cpu, peak_memory=peak)
        return out

    def _observe(self, workload: int, placement: Placement) -> Observation:
        run = Path(placement["run"])
        pid = placement.get("pid") or _read_pid(run)
        groups = self._groups_of(placement)
        _reap(pid)
        if pid is None:
            # Between the first checkpoint and the launcher's claim: still starting.
            return Observation(alive=(run / "gpus.json").exists() and _exit_status(run) is None)
        if alive(pid, placement.get("started")):
            cpu = groups.cpu_seconds(workload) if groups is not None else None
            return Observation(alive=True, cpu_seconds=cpu)
        code = _exit_status(run)
        ran = _command_ran(run)
        failed, reason = _ended(code, ran)
        if code is None:
            reason = _unrecorded(run, self.runs.parent) or reason
        elif not ran:
            reason = setup_failure(code, placement) or reason
        if groups is not None:
            mem = groups.memory(workload)
            if mem.oom_killed:
                used = format_bytes(mem.peak or mem.limit or 0)
                limit = format_bytes(mem.limit or 0)
                failed, reason = True, f"out of memory: used {used} of {limit}"
            killed = _leftovers(groups, workload, run)
            if killed:
                were = "process was" if killed == 1 else "processes were"
                reason += f"; {killed} leftover {were} killed at its end"
        return Observation(
            alive=False,
            exit_code=code,
            failed=failed,
            reason=reason,
            how_stopped=_how_stopped(run),
        )

    async def present(self) -> set[int]:
        """This installation's: its groups, run directories and private /tmp directories."""
        found = self.cgroups.workloads() if self.cgroups else set()
        places = [*self.runs.iterdir(), *self.scratch.glob("w*")]
        if self._own_base:  # old-named /tmp directories, where no other installation has any
            places += self._scratch_base.glob("w*")
        for run in places:
            name = run.name[1:].split(".")[0]
            if run.name.startswith("w") and name.isdigit():
                found.add(int(name))
        return found

    async def reap(self, workload: int) -> None:
        # Each run directory says which installation's names its attempt used (none: the old).
        named: dict[str | None, Cgroups | None] = {self.installation: self.cgroups}
        for run in self.runs.glob(f"w{workload}.*"):
            recorded = _installation_of(run, self.installation)
            groups = named.setdefault(recorded, self._groups_of({"installation": recorded}))
            pid = _read_pid(run)
            if pid is not None and _exit_status(run) is None:
                self._signal(groups, workload, pid, signal.SIGKILL)
            shutil.rmtree(run, ignore_errors=True)
            if recorded != self.installation:
                remove_tree(self._scratch_of({"installation": recorded}) / run.name)
        tmps = [*self.scratch.glob(f"w{workload}.*")]
        if self._own_base:
            tmps += self._scratch_base.glob(f"w{workload}.*")
        for tmp in tmps:
            remove_tree(tmp)
        for groups in named.values():
            if groups is not None:
                groups.kill_all(workload)
                groups.remove(workload)

    def _groups_of(self, placement: Placement) -> Cgroups | None:
        """The driver for a workload's groups, under the installation's name it started with
        (none recorded: started before installations were named, ``allotment/w<id>``)."""
        if self.cgroups is None:
            return None
        recorded = placement.get("installation")
        if recorded == self.installation:
            return self.cgroups
        return self.cgroups.at(LEGACY if recorded is None else prefix_of(recorded))

    def _scratch_of(self, placement: Placement) -> Path:
        """Where a workload's private /tmp directories are, as for ``_groups_of``."""
        recorded = placement.get("installation")
        return self._scratch_base if recorded is None else self._scratch_base / recorded

    def watch(self, workload: int, placement: Placement, ended: Callable[[int], None]) -> None:
        """A pidfd for the launcher (Linux 5.3+): readable the moment it exits, parent or not."""
        pid = placement.get("pid")
        if pid is None or workload in self._watched or not hasattr(os, "pidfd_open"):
            return
        try:
            fd = os.pidfd_open(pid)
        except OSError:  # already gone
            ended(workload)
            return
        if not alive(pid, placement.get("started")):  # the pid was reused
            os.close(fd)
            ended(workload)
            return
        loop = asyncio.get_running_loop()
        self._watched.add(workload)

        def fire() -> None:
            loop.remove_reader(fd)
            os.close(fd)
            _reap(pid)
            self._watched.discard(workload)
            ended(workload)

        loop.add_reader(fd, fire)

    # -- stop -------------------------------------------------------------------------------

    async def stop(self, workload: int, placement: Placement, grace: float) -> None:
        run = Path(placement["run"])
        pid = placement.get("pid") or _read_pid(run)
        started = placement.get("started")
        groups = self._groups_of(placement)
        deadline = time.monotonic() + grace
        # Repeated: a process still being exec'd when the first one came may have missed it.
        while True:
            self._signal(groups, workload, pid, signal.SIGTERM, started)
            for _ in range(5):
                if not self._any_left(groups, workload, pid, started):
                    break
                if time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.05)
            else:
                continue
            break
        # With no grace period nothing was given time to stop: nothing to tell of it.
        if (
            grace > 0
            and time.monotonic() >= deadline
            and self._stubborn(groups, workload, pid, started)
        ):
            # Said in its reason (``_how_stopped``); a full disk only loses this remark.
            with contextlib.suppress(OSError):
                (run / "forced").write_text(f"{grace:g}")
        self._kill_all(groups, workload, pid, started)
        # The launcher records the exit status once its child is gone; give it a moment.
        for _ in range(100):
            if pid is None or not alive(pid, started):
                break
            await asyncio.sleep(0.01)

    def _signal(
        self,
        groups: Cgroups | None,
        workload: int,
        pid: int | None,
        sig: int,
        started: int | None = None,
    ) -> None:
        """Signal every process of the workload: its cgroups (``groups``' of it), else the
        launcher's process group, and that only while the launcher is alive (``started``: its
        start time, when known), so that a reused pid's group is never signalled."""
        if groups is not None:
            groups.signal(workload, sig)
        elif pid is not None and (started is None or alive(pid, started)):
            try:
                os.killpg(pid, sig)  # the launcher leads its own session and group
            except (ProcessLookupError, PermissionError):
                pass

    def _any_left(
        self, groups: Cgroups | None, workload: int, pid: int | None, started: int | None
    ) -> bool:
        if groups is not None:
            return bool(groups.procs(workload))
        return pid is not None and alive(pid, started)

    def _stubborn(
        self, groups: Cgroups | None, workload: int, pid: int | None, started: int | None
    ) -> bool:
        """Whether anything of the workload outlived SIGTERM and its grace period: besides
        the launcher, which only waits for its command (it catches the signal) to record how
        it ended."""
        if groups is not None:
            return any(p != pid for p in groups.procs(workload))
        return pid is not None and alive(pid, started)

    def _kill_all(
        self, groups: Cgroups | None, workload: int, pid: int | None, started: int | None = None
    ) -> None:
        if groups is not None:
            # Everything of the workload except the launcher, which records the exit status.
            groups.kill_all(workload, spare=() if pid is None else (pid,))
        else:
            self._signal(groups, workload, pid, signal.SIGKILL, started)

    async def release(self, workload: int, placement: Placement) -> None:
        """After the end was recorded: kill anything left behind, drop the cgroups and the run
        directory (whose ``gpus.json`` held the workload's GPUs)."""
        # File-system work off the event loop: it is not on anyone's critical path.
        run = Path(placement["run"])
        groups, scratch = self._groups_of(placement), self._scratch_of(placement)
        named = "installation" in placement
        await asyncio.to_thread(self._release, groups, workload, run, scratch, named)

    def _release(
        self, groups: Cgroups | None, workload: int, run: Path, scratch: Path, named: bool
    ) -> None:
        if groups is not None:
            groups.kill_all(workload)
            for _ in range(100):
                groups.remove(workload)
                if not groups.exists(workload):
                    break
                time.sleep(0.01)
        shutil.rmtree(run, ignore_errors=True)
        # Under its installation's name: this attempt's /tmp, and any earlier one's. Under the
        # old names only this attempt's: another installation's may sit beside it, same id.
        for tmp in scratch.glob(f"w{workload}.*") if named else [scratch / run.name]:
            remove_tree(tmp)

    async def read_output(
        self,
        workload: int,
        placement: Placement,
        stream: Literal["stdout", "stderr"],
        offset: int,
        limit: int,
    ) -> Output | None:
        """Read as the workload's own POSIX account (``output.read_as``), never as the
        service: the file lives in directories its user controls."""
        path = placement.get(stream)
        if path is None:
            return None
        uid, gid = int(placement["uid"]), int(placement["gid"])
        data = await read_as(uid, gid, path, offset, limit, installation=self.installation)
        return Output(path, data)

    async def close(self) -> None:
        """Drop this installation's parent groups where nothing is left in them (remade by the
        next start, of this process or another); running workloads keep running, and keep
        theirs. Its /tmp directory stays: the installation's backend in another process (the
        controller's, where this one is an API worker's) may start a workload in it at once."""
        if self.cgroups is not None:
            await asyncio.to_thread(self.cgroups.tidy)

    @staticmethod
    def private_path(path: str) -> str | None:
        """As root, every workload has a private /tmp and /dev/shm (``process.PRIVATE_DIRS``)."""
        return under_private(path) if os.geteuid() == 0 else None

    async def capacity(self) -> list[NodeCapacity]:
        """Nothing: this machine runs what the policy declares for it (the administrator's word,
        in force as soon as a policy is applied). What it pins GPUs from is that declaration
        too (``inventory``), so reporting another count (``nvidia-smi``'s) would have the
        scheduler place work on devices it does not pin."""
        return []


def _exited(child: int) -> bool:
    """Whether a launcher this process spawned has ended (collecting its exit if so)."""
    try:
        return os.waitpid(child, os.WNOHANG)[0] != 0
    except ChildProcessError:
        return True


def _reap(pid: int | None) -> None:
    """Collect the exit of a launcher this process started (after a restart, init does)."""
    if pid is None:
        return
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _command_ran(run: Path) -> bool:
    """Whether the user's part got as far as its command (it wrote to ``started``)."""
    try:
        return (run / "started").stat().st_size > 0
    except OSError:
        return False


def remove_tree(path: Path) -> None:
    """Remove a tree its user may still be writing into (a process of theirs elsewhere can hold
    a directory of it open): each directory is made root's and 0700 before it is emptied, so
    nothing more can be created in it. Never follows a symbolic link."""
    for _ in range(3):
        try:
            for _top, _dirs, _files, fd in os.fwalk(path, follow_symlinks=False):
                with contextlib.suppress(OSError):
                    os.fchown(fd, 0, 0)
                    os.fchmod(fd, 0o700)
        except FileNotFoundError:
            return
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            return
    log.warning("could not remove all of %s", path)


def _read_number(path: Path) -> int | None:
    """The number a launcher wrote to ``path``; None until it has (or if it is torn)."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _keep_descriptors_from_workloads() -> None:
    """Mark every descriptor this process inherited close-on-exec. Python opens its own that
    way, but what the service's parent left open (a pipe of a supervisor, a terminal) would
    otherwise reach every workload's command: posix_spawn keeps what is inheritable."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            with contextlib.suppress(OSError):  # the listing's own descriptor, closed by now
                os.set_inheritable(fd, False)


async def _readable(fd: int, timeout: float) -> None:
    """Wait until ``fd`` (a pipe's read end, closed here after) has a byte or its end."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def fire() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, fire)
    try:
        await asyncio.wait_for(ready, timeout)
    except TimeoutError:
        pass  # the checks that follow say what became of the launcher
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def _own_directory(path: Path) -> None:
    """``path`` is a directory of this process's user, not a link: where root makes every
    workload's private /tmp, nobody else may have made it first (a pool's ``tmp_dir`` may be a
    file system users write to)."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise RuntimeError(
            f"{path} is not a directory of the service's own (a link, or made by uid "
            f"{st.st_uid}): workloads' private /tmp directories cannot go there; remove it and "
            "start again"
        )


def _read_pid(run: Path) -> int | None:
    return _read_number(run / "pid")


def _exit_status(run: Path) -> int | None:
    """The status the launcher recorded; None while it has not (the file exists, empty, from
    the start: its room is reserved)."""
    return _read_number(run / "exit")


def _unrecorded(run: Path, data: Path) -> str | None:
    """Why an attempt whose launcher is gone has no exit status, where the data directory's
    file system says: full now (its reserved room missing, as for a run started before room
    was reserved). None where nothing says why."""
    if not space.full(run):
        return None
    return (
        f"outcome unknown: the data directory's file system ({data}) was full at "
        f"{time.strftime('%H:%M', time.gmtime())} UTC, and its exit status could not be "
        "recorded"
    )


def _leftovers(groups: Cgroups, workload: int, run: Path) -> int:
    """Kill what the workload left running in its groups once its launcher ended (daemons,
    children it did not wait for); how many processes that was, over every look. Their pids
    are recorded (``leftovers``), so that a second look, after a restart, still says it, and
    a process that outlives SIGKILL (in uninterruptible sleep) is counted once, not again at
    each look."""
    try:
        before = {int(p) for p in (run / "leftovers").read_text().split() if p.isdigit()}
    except OSError:
        before = set()
    found = set(before)
    for _ in range(100):
        pids = groups.procs(workload)
        if not pids:
            break
        found.update(pids)
        groups.kill_all(workload)
    if found != before:
        with contextlib.suppress(OSError):  # on a full disk only the count is lost
            (run / "leftovers").write_text("".join(f"{p}\n" for p in sorted(found)))
    return len(found)


def _how_stopped(run: Path) -> str:
    """What a stop had to do beyond asking (``stop``'s ``forced``), for the reason."""
    grace = (run / "forced").read_text() if (run / "forced").exists() else ""
    if not grace:
        return ""
    return f"it did not stop on SIGTERM and was killed after the {grace} s grace period"


def _installation_of(run: Path, default: str) -> str | None:
    """The installation's name a run directory's attempt used; None: a launcher started from
    it before installations were named. ``default`` where nothing says, and nothing of the
    attempt was started either (the service stopped right after making the directory)."""
    try:
        return check_name((run / "installation").read_text())
    except FileNotFoundError:
        return None if (run / "pid").exists() else default
    except (OSError, ValueError):  # torn: written right after the directory was made
        return default
