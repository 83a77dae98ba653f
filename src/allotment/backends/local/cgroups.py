"""Control groups: one per workload, with its CPU, memory and process limits.

Both hierarchies exist in the wild: the unified one (v2: one tree, ``cpu.max``, ``memory.max``)
and the legacy one (v1: a tree per controller, ``cpu.cfs_quota_us``, ``memory.limit_in_bytes``).
``detect`` picks what the machine has.

Names. A workload's group is ``allotment/<installation>/w<id>`` in every hierarchy used
(``<installation>``: ``allotment.installation``, e.g. ``service-3f9a01c2``); membership of that
group is what identifies its processes, so a crash of the service at any moment never leaves a
process nobody can find. Workload ids are an installation's own (each numbers from 1), so the
installation is part of the name: two installations' job 1 are two groups, and one's stop or
recovery never kills the other's. A driver works below one parent (``prefix``): an
installation's backend sees only its own groups. Nested rather than ``allotment-<installation>``
beside it: one ``allotment`` group at the top of the hierarchy holds everything of every
installation, for an administrator to find and limit as a whole. Helpers the service runs on a
user's behalf (reading a job's output) share ``allotment/<installation>/helpers`` (``HELPERS``),
one group per installation: their limits are each installation's own, and a test run beside a
real service cannot use up the real one's readers.

Versions before installations were named used ``allotment/w<id>`` and ``allotment/helpers``
(``LEGACY``); a workload started then is still found through a driver at that prefix (its
placement records no installation), and an installation may not be called ``w<n>`` or
``helpers``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
from abc import ABC, abstractmethod
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "HELPERS",
    "LEGACY",
    "PREFIX",
    "Cgroups",
    "Group",
    "Limits",
    "MemoryOutcome",
    "V1",
    "V2",
    "detect",
    "prefix_of",
]

#: The group at the top of the hierarchy that holds every installation's groups.
PREFIX = "allotment"
#: Where versions before named installations made their groups (``allotment/w<id>``).
LEGACY = PREFIX
#: The group of the service's helper processes: not a workload's, so never ``w<id>``.
HELPERS = "helpers"
#: A workload's id, or the name of one of the service's own groups (``HELPERS``).
Group = int | str


def _name(group: Group) -> str:
    return f"w{group}" if isinstance(group, int) else group


def prefix_of(installation: str | None) -> str:
    """The parent of an installation's groups; None: that of workloads started before
    installations were named."""
    return LEGACY if installation is None else f"{PREFIX}/{installation}"


#: CFS period; the quota is the share of it a workload may use.
PERIOD_US = 100_000


@dataclass(frozen=True)
class Limits:
    millicpus: int
    memory: int
    pids: int = 4096
    #: Device numbers ("195:1") the workload may not open: the machine's GPUs it was not given.
    denied_devices: tuple[str, ...] = ()


@dataclass(frozen=True)
class MemoryOutcome:
    oom_killed: bool
    peak: int | None
    limit: int | None


def _write(path: Path, value: str) -> None:
    path.write_text(value)


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return None if text in ("", "max") else int(text)


def _kill(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


class Cgroups(ABC):
    """One driver per hierarchy version; ``root`` is where the hierarchy is mounted, ``prefix``
    the group (relative to it) whose children this driver makes, finds and removes."""

    version: int

    def __init__(self, root: Path = Path("/sys/fs/cgroup"), prefix: str = LEGACY) -> None:
        self.root = root
        self.prefix = prefix

    def at(self, prefix: str) -> Cgroups:
        """A driver of the same hierarchy working below ``prefix`` instead."""
        return type(self)(self.root, prefix)

    @abstractmethod
    def create(self, workload: Group, limits: Limits) -> list[Path]:
        """Make the workload's group(s) with ``limits``; return the ``cgroup.procs`` files a
        process writes its pid to, to join. Safe to repeat."""

    @abstractmethod
    def procs(self, workload: Group) -> list[int]:
        """Processes in the workload's group, [] when it has none or does not exist."""

    @abstractmethod
    def memory(self, workload: int) -> MemoryOutcome:
        """Whether the kernel killed something for lack of memory, and the peak use."""

    @abstractmethod
    def cpu_seconds(self, workload: int) -> float | None:
        """CPU time its processes have used, in seconds (None: not known)."""

    @abstractmethod
    def remove(self, workload: int) -> None:
        """Remove the (empty) group(s). Safe when already gone."""

    @abstractmethod
    def workloads(self) -> set[int]:
        """Workloads that have a group."""

    @abstractmethod
    def exists(self, workload: int) -> bool:
        """Whether anything of the workload's group(s) is left."""

    @abstractmethod
    def tidy(self) -> None:
        """Remove the helpers' group and then ``prefix``'s own group(s) where nothing is left
        in them (when the backend closes): an installation that runs nothing leaves no
        trace. Not at ``LEGACY``: the old groups there may be any installation's."""

    def signal(self, workload: int, sig: int) -> None:
        _kill(self.procs(workload), sig)

    def kill_all(self, workload: int, spare: Collection[int] = ()) -> None:
        """SIGKILL until only ``spare`` is left in the group (a fork racing the kill is caught
        next round)."""
        for _ in range(100):
            pids = [p for p in self.procs(workload) if p not in spare]
            if not pids:
                return
            _kill(pids, signal.SIGKILL)
            os.sched_yield()

    @staticmethod
    def _rmdir(path: Path) -> None:
        try:
            path.rmdir()
        except FileNotFoundError:
            pass
        except OSError as e:  # still busy: a zombie being reaped
            if e.errno != errno.EBUSY:
                raise

    @staticmethod
    def _rmdir_if_empty(path: Path) -> None:
        with contextlib.suppress(OSError):  # still holds groups or processes (EBUSY), or gone
            path.rmdir()

    @staticmethod
    def _ids(base: Path) -> set[int]:
        if not base.is_dir():
            return set()
        return {
            int(p.name[1:]) for p in base.iterdir() if p.name[:1] == "w" and p.name[1:].isdigit()
        }


class V1(Cgroups):
    """Legacy hierarchies: cpu, memory, pids and devices each mounted on their own."""

    version = 1
    #: cpuacct (CPU time used, for the culler) is usually co-mounted with cpu; where it is
    #: mounted on its own, the workload gets a group there too.
    CONTROLLERS = ("cpu", "cpuacct", "memory", "pids", "devices")

    def _dir(self, controller: str, workload: Group) -> Path:
        return self.root / controller / self.prefix / _name(workload)

    def create(self, workload: Group, limits: Limits) -> list[Path]:
        out = []
        mounts: set[Path] = set()
        for c in self.CONTROLLERS:
            if not (self.root / c).is_dir() or (self.root / c).resolve() in mounts:
                continue
            mounts.add((self.root / c).resolve())
            d = self._dir(c, workload)
            d.mkdir(parents=True, exist_ok=True)
            out.append(d / "cgroup.procs")
        cpu = self._dir("cpu", workload)
        if cpu.is_dir():
            _write(cpu / "cpu.cfs_period_us", str(PERIOD_US))
            _write(cpu / "cpu.cfs_quota_us", str(limits.millicpus * PERIOD_US // 1000))
        mem = self._dir("memory", workload)
        if mem.is_dir():
            _write(mem / "memory.limit_in_bytes", str(limits.memory))
            swap = mem / "memory.memsw.limit_in_bytes"
            if swap.exists():  # memory + swap: no escaping the limit into swap
                _write(swap, str(limits.memory))
        pids = self._dir("pids", workload)
        if pids.is_dir():
            _write(pids / "pids.max", str(limits.pids))
        dev = self._dir("devices", workload)
        if dev.is_dir():
            # The list starts as "allow everything"; each GPU the workload was not given is an
            # exception. (Allowing a device after denying a wildcard does not work there: v1
            # only removes exceptions that match exactly.)
            for number in limits.denied_devices:
                _write(dev / "devices.deny", f"c {number} rwm")
        return out

    def procs(self, workload: Group) -> list[int]:
        found: set[int] = set()
        for c in self.CONTROLLERS:
            try:
                text = (self._dir(c, workload) / "cgroup.procs").read_text()
            except OSError:
                continue
            found.update(int(x) for x in text.split())
        return sorted(found)

    def memory(self, workload: int) -> MemoryOutcome:
        d = self._dir("memory", workload)
        counter: int | None = None
        try:
            for line in (d / "memory.oom_control").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    counter = int(value)
        except OSError:
            pass
        limit = _read_int(d / "memory.limit_in_bytes")
        peak = _read_int(d / "memory.max_usage_in_bytes")
        if counter is not None:
            killed = counter > 0
        else:  # kernels before 4.13 count no kills: reaching the limit is the sign then
            killed = bool(_read_int(d / "memory.failcnt")) and peak == limit
        return MemoryOutcome(killed, peak, limit)

    def cpu_seconds(self, workload: int) -> float | None:
        # cpuacct is co-mounted with cpu on most systems ("cpu,cpuacct"), else on its own.
        for c in ("cpu", "cpuacct"):
            ns = _read_int(self._dir(c, workload) / "cpuacct.usage")
            if ns is not None:
                return ns / 1e9
        return None

    def remove(self, workload: int) -> None:
        for c in self.CONTROLLERS:
            self._rmdir(self._dir(c, workload))

    def workloads(self) -> set[int]:
        out: set[int] = set()
        for c in self.CONTROLLERS:
            out |= self._ids(self.root / c / self.prefix)
        return out

    def exists(self, workload: int) -> bool:
        return any(self._dir(c, workload).exists() for c in self.CONTROLLERS)

    def tidy(self) -> None:
        if self.prefix != LEGACY:
            for c in self.CONTROLLERS:
                self._rmdir_if_empty(self._dir(c, HELPERS))
                self._rmdir_if_empty(self.root / c / self.prefix)


class V2(Cgroups):
    """The unified hierarchy. Device access there needs an eBPF program, which this driver
    does not load: GPUs are pinned by ``CUDA_VISIBLE_DEVICES`` alone on v2 (said in the log)."""

    version = 2

    def _dir(self, workload: Group) -> Path:
        return self.root / self.prefix / _name(workload)

    def create(self, workload: Group, limits: Limits) -> list[Path]:
        # Each group from the top down to the workload's parent hands the controllers on.
        wanted = {"cpu", "memory", "pids"}
        wanted &= set((self.root / "cgroup.controllers").read_text().split())
        tree = self.root
        for part in [*self.prefix.split("/"), ""]:
            control = tree / "cgroup.subtree_control"
            missing = wanted - set(control.read_text().split())
            if missing:
                _write(control, " ".join(f"+{c}" for c in sorted(missing)))
            if part:
                tree = tree / part
                tree.mkdir(exist_ok=True)
        d = self._dir(workload)
        d.mkdir(exist_ok=True)
        if (d / "cpu.max").exists():
            _write(d / "cpu.max", f"{limits.millicpus * PERIOD_US // 1000} {PERIOD_US}")
        if (d / "memory.max").exists():
            _write(d / "memory.max", str(limits.memory))
            if (d / "memory.swap.max").exists():
                _write(d / "memory.swap.max", "0")
        if (d / "pids.max").exists():
            _write(d / "pids.max", str(limits.pids))
        return [d / "cgroup.procs"]

    def procs(self, workload: Group) -> list[int]:
        try:
            return sorted(
                int(x) for x in (self._dir(workload) / "cgroup.procs").read_text().split()
            )
        except OSError:
            return []

    def memory(self, workload: int) -> MemoryOutcome:
        d = self._dir(workload)
        killed = False
        try:
            for line in (d / "memory.events").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and int(value) > 0:
                    killed = True
        except OSError:
            pass
        return MemoryOutcome(killed, _read_int(d / "memory.peak"), _read_int(d / "memory.max"))

    def kill_all(self, workload: int, spare: Collection[int] = ()) -> None:
        kill = self._dir(workload) / "cgroup.kill"
        if not spare and kill.exists():  # Linux 5.14+: one write kills the group, forks too
            with contextlib.suppress(OSError):
                _write(kill, "1")
        super().kill_all(workload, spare)

    def cpu_seconds(self, workload: int) -> float | None:
        try:
            for line in (self._dir(workload) / "cpu.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    return int(value) / 1e6
        except (OSError, ValueError):
            pass
        return None

    def remove(self, workload: int) -> None:
        self._rmdir(self._dir(workload))

    def workloads(self) -> set[int]:
        return self._ids(self.root / self.prefix)

    def exists(self, workload: int) -> bool:
        return self._dir(workload).exists()

    def tidy(self) -> None:
        if self.prefix != LEGACY:
            self._rmdir_if_empty(self._dir(HELPERS))
            self._rmdir_if_empty(self.root / self.prefix)


def detect(root: Path = Path("/sys/fs/cgroup"), prefix: str = LEGACY) -> Cgroups | None:
    """The driver for this machine's hierarchy, working below ``prefix``, or None when no
    usable, writable one exists (not root, or a container without cgroup delegation)."""
    if (root / "cgroup.controllers").exists():
        v2: Cgroups = V2(root, prefix)
        return v2 if os.access(root, os.W_OK) else None
    if (root / "memory").is_dir() and (root / "cpu").is_dir():
        return V1(root, prefix) if os.access(root / "memory", os.W_OK) else None
    return None
