"""The one seam every Slurm command goes through.

Each command runs as a fresh process with a fixed environment (``SLURM_CONF``, ``PATH``,
``LANG=C``), by absolute path, killed when it takes longer than the policy's
``slurm.command_timeout``. Commands a user's job depends on (``sbatch``) run as that user's
POSIX account through ``setpriv``; nothing of the service's environment reaches them. A
controller that does not answer is ``SlurmUnavailable`` (nothing is concluded from it); any
other failure is ``SlurmError`` with Slurm's own words. Nothing here logs what a command was
given on its standard input (a job's script and environment).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import stat
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from allotment.backends.base import BackendUnavailable
from allotment.backends.local.posix import PosixAccount

__all__ = ["Completed", "SlurmError", "SlurmRunner", "SlurmUnavailable"]

log = logging.getLogger("allotment.slurm")

#: Where programs are looked for when the policy names no ``bin_dir``, before ``PATH``.
DEFAULT_BIN = "/usr/bin"
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"

#: What Slurm's commands print when slurmctld (or slurmdbd) cannot be reached.
UNREACHABLE = (
    "unable to contact slurm controller",
    "socket timed out",
    "zero bytes were transmitted",
    "connection refused",
    "slurm_persist_conn_open_without_init",
    "unable to connect to database",
    "slurmdbd: error",
    "communication connection failure",
    "connect failure",
    "slurm_load_jobs error: unable to contact",
)


class SlurmError(Exception):
    """A Slurm command failed for a reason of its own (a bad option, an invalid account)."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(f"{argv[0]} failed (status {returncode}): {stderr or 'no message'}")


class SlurmUnavailable(BackendUnavailable):
    """slurmctld (or slurmdbd) does not answer: retry later, conclude nothing."""


@dataclass(frozen=True)
class Completed:
    """A command that ran to its end."""

    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes
    #: Seconds it took, from start to exit.
    seconds: float


def untrusted(path: str) -> str | None:
    """Why root must not run or read ``path`` (a Slurm program, ``slurm.conf``), or None.

    The service runs Slurm's commands as root with the policy's ``slurm.bin_dir`` and
    ``slurm.conf``: a file or directory on the way that someone else may write would let them
    choose what root runs (a program, a ``PluginDir``). Each must belong to root (or the
    service's own user) and be writable by nobody else; a directory writable by all is allowed
    only with its sticky bit (``/tmp``, ``/var/tmp``), where others cannot replace what is
    root's."""
    me = os.geteuid()
    here = os.path.abspath(path)
    while True:
        try:
            st = os.stat(here)
        except OSError as e:
            return f"{here}: {e.strerror}"
        sticky = stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX
        if st.st_uid not in (0, me):
            return f"{here} belongs to uid {st.st_uid}, not to root"
        if st.st_mode & 0o022 and not (sticky and here != os.path.abspath(path)):
            return f"{here} may be written by others (mode {stat.S_IMODE(st.st_mode):o})"
        parent = os.path.dirname(here)
        if parent == here:
            return None
        here = parent


def unreachable(stderr: str) -> bool:
    """Whether Slurm's message says its controller (or database daemon) did not answer."""
    low = stderr.lower()
    return any(words in low for words in UNREACHABLE)


class SlurmRunner:
    """Runs Slurm's commands.

    Parameters
    ----------
    conf
        The cluster's ``slurm.conf`` (``SLURM_CONF``); None: Slurm's default.
    bin_dir
        Where the commands are; None: ``/usr/bin``, then ``PATH``.
    timeout
        Seconds a command may take before it is killed (and Slurm counts as unavailable).
    """

    def __init__(self, conf: str | None = None, bin_dir: str | None = None, timeout: float = 30.0):
        self.conf = conf
        self.bin_dir = bin_dir
        self.timeout = timeout
        self._programs: dict[str, str] = {}
        #: Commands run so far, by program name (tests and benchmarks count them).
        self.calls: Counter[str] = Counter()
        #: Seconds spent in each program, summed.
        self.seconds: dict[str, float] = {}

    def program(self, name: str) -> str:
        """The absolute path of Slurm's ``name`` (never looked up again once found)."""
        found = self._programs.get(name)
        if found is not None:
            return found
        dirs = [self.bin_dir] if self.bin_dir else [DEFAULT_BIN]
        found = None
        for d in dirs:
            path = os.path.join(d, name)
            if os.access(path, os.X_OK):
                found = path
                break
        if found is None:
            which = None if self.bin_dir else shutil.which(name)
            if which is None:
                where = self.bin_dir or f"{DEFAULT_BIN} or PATH"
                raise SlurmUnavailable(f"{name} is not installed here (looked in {where})")
            found = os.path.abspath(which)
        for checked in (found, *([self.conf] if self.conf else [])):
            why = untrusted(checked)
            if why is not None:
                raise SlurmError(
                    (name,),
                    1,
                    f"refusing to run Slurm's {name} as the service: {why}. Make it root's and "
                    "writable by root alone (slurm.bin_dir and slurm.conf in the policy).",
                )
        self._programs[name] = found
        return found

    def environment(self, user: PosixAccount | None = None) -> dict[str, str]:
        """The whole environment of a command: nothing of the service's."""
        path = self.bin_dir + ":" + SYSTEM_PATH if self.bin_dir else SYSTEM_PATH
        env = {"PATH": path, "LANG": "C", "LC_ALL": "C"}
        if self.conf:
            env["SLURM_CONF"] = self.conf
        if user is not None:
            env.update(HOME=str(user.home), USER=user.name, LOGNAME=user.name)
        else:
            env["HOME"] = "/"
        return env

    async def run(
        self,
        argv: Sequence[str],
        *,
        user: PosixAccount | None = None,
        stdin: bytes | None = None,
        check: bool = True,
    ) -> Completed:
        """Run ``argv`` (``argv[0]`` a Slurm program's name), as ``user`` where given.

        Raises
        ------
        SlurmUnavailable
            It timed out, or Slurm said its controller does not answer.
        SlurmError
            It failed otherwise (``check``; else the failure is returned).
        """
        name = argv[0]
        command = [self.program(name), *argv[1:]]
        if user is not None and user.uid != os.geteuid():
            command = [
                _setpriv(),
                f"--reuid={user.uid}",
                f"--regid={user.gid}",
                "--init-groups",
                "--",
                *command,
            ]
        t = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.environment(user),
            cwd="/",
            start_new_session=True,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), self.timeout)
        except TimeoutError:
            _kill(proc)
            with contextlib.suppress(Exception):
                await proc.communicate()
            raise SlurmUnavailable(
                f"Slurm does not answer: {name} took longer than {self.timeout:g} s"
            ) from None
        except asyncio.CancelledError:
            _kill(proc)
            raise
        seconds = time.monotonic() - t
        self.calls[name] += 1
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        done = Completed(tuple(argv), proc.returncode or 0, out, err, seconds)
        if done.returncode != 0:
            said = err.decode(errors="replace").strip()
            if unreachable(said):
                raise SlurmUnavailable(f"Slurm does not answer ({name}: {_first_line(said)})")
            if check:
                log.debug("%s failed with status %d: %s", name, done.returncode, said)
                raise SlurmError(argv, done.returncode, said)
        return done


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else ""


_SETPRIV: list[str] = []


def _setpriv() -> str:
    """``setpriv`` by absolute path (found once; never through a user's PATH)."""
    if not _SETPRIV:
        for d in ("/usr/bin", "/bin", "/usr/sbin", "/sbin"):
            if os.access(os.path.join(d, "setpriv"), os.X_OK):
                _SETPRIV.append(os.path.join(d, "setpriv"))
                break
        else:
            raise RuntimeError("setpriv is not installed (util-linux)")
    return _SETPRIV[0]


def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, 9)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
