"""Reading a workload's output files on its owner's behalf.

The files live in the user's directories, which the user controls: a process with the
service's privileges that opened them could be led through a symlink to any file on the
machine. So they are read by a short helper running as the workload's own POSIX account
(``setpriv`` by absolute path, a fixed environment, ``/`` as its directory), which opens the
file without following a symlink and without blocking (a FIFO, a terminal), reads only a
regular file, and is killed when it takes longer than :data:`READ_SECONDS`. Every helper is
waited for, so none outlives its request, as a process or as a descriptor; as root, helpers
run in a cgroup of their installation's (``allotment/<installation>/helpers``: one CPU, 1 GiB,
256 processes together).
"""

from __future__ import annotations

import asyncio
import errno
import os
import sys

from allotment.backends.local.cgroups import HELPERS, Limits, detect, prefix_of
from allotment.backends.local.process import ROOT_ENVIRONMENT, program
from allotment.errors import Conflict
from allotment.interpreters import python_for_everyone

__all__ = ["READ_SECONDS", "read_as"]

#: How long a helper may take before it is killed and the request answered with an error.
READ_SECONDS = 5.0

#: Exit statuses of the helper besides 0 (read): its stderr says more.
_CANNOT_OPEN = 2  # stderr: the errno's name
_NOT_REGULAR = 3  # stderr: what the file is instead
_NOT_JOINED = 125  # the helpers' cgroup could not be joined

#: Run as the user, with ``-I -S``: no environment, no site, nothing from the user's files
#: but the one it was asked to read.
_HELPER = """\
import os, stat, sys
offset, limit, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
try:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY)
except OSError as e:
    sys.stderr.write(str(e.errno))
    sys.exit(2)
mode = os.fstat(fd).st_mode
if not stat.S_ISREG(mode):
    kinds = [(stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISDIR, "a directory")]
    sys.stderr.write(next((k for test, k in kinds if test(mode)), "not a file"))
    sys.exit(3)
out = sys.stdout.buffer
while limit > 0:
    chunk = os.pread(fd, min(limit, 1 << 20), offset)
    if not chunk:
        break
    out.write(chunk)
    offset += len(chunk)
    limit -= len(chunk)
out.flush()
"""

#: Runs as root: join the helpers' cgroup ($1: its ``cgroup.procs`` files, ":"-separated),
#: then become the helper (the rest).
_JOIN = '''IFS=:; for f in $1; do echo $$ > "$f" || exit 125; done; unset IFS; shift; exec "$@"'''
#: What the helpers may use together: they read files and pass them on, nothing more.
HELPER_LIMITS = Limits(millicpus=1000, memory=1024 * 2**20, pids=256)


#: The ``cgroup.procs`` files of each installation's helpers' group, as made by this process.
_made: dict[str | None, tuple[str, ...]] = {}


def _helper_groups(installation: str | None) -> tuple[str, ...]:
    """The ``cgroup.procs`` files of the installation's helpers' group, or () without
    cgroups. Made again when gone: the installation's backend removes it when it closes
    (in another process, perhaps) with no helper in it."""
    procs = _made.get(installation)
    if procs is None or not all(map(os.path.exists, procs)):
        cgroups = detect(prefix=prefix_of(installation))
        made = cgroups.create(HELPERS, HELPER_LIMITS) if cgroups is not None else []
        procs = _made[installation] = tuple(str(p) for p in made)
    return procs


#: Helpers of cancelled requests, still being reaped (a reference keeps the task alive).
_reaping: set[asyncio.Task[tuple[bytes, bytes]]] = set()


async def read_as(
    uid: int, gid: int, path: str, offset: int, limit: int, *, installation: str | None = None
) -> bytes | None:
    """Up to ``limit`` bytes of ``path`` from ``offset``, read as ``uid``; None when the file
    does not exist or that account may not read it. ``installation``: whose helpers' group the
    reader joins (None: ``allotment/helpers``, as before installations were named).

    Raises
    ------
    Conflict
        ``path`` is a symbolic link or not a regular file (a FIFO, a device), or could not be
        read within :data:`READ_SECONDS`; the message says which, for the researcher.
    """
    helper = ["-I", "-S", "-c", _HELPER, str(offset), str(limit), path]
    if os.geteuid() != uid:
        # ``--`` ends setpriv's options; after ``-c`` the interpreter takes no more options.
        drop = [
            program("setpriv"),
            f"--reuid={uid}",
            f"--regid={gid}",
            "--init-groups",
            "--no-new-privs",
        ]
        command = [*drop, "--", python_for_everyone(), *helper]
        procs = _helper_groups(installation)
        if procs:  # into the helpers' cgroup before anything of the user's is opened
            command = ["/bin/sh", "-c", _JOIN, "allot-helper", ":".join(procs), *command]
    else:  # single-user mode: the service's own account, and its own interpreter
        command = [sys.executable, *helper]
    proc = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=ROOT_ENVIRONMENT,
        cwd="/",
    )
    try:
        data, said = await asyncio.wait_for(proc.communicate(), READ_SECONDS)
    except TimeoutError:
        _kill(proc)
        await proc.communicate()
        raise Conflict(
            f"{path} could not be read within {READ_SECONDS:g} s (is it on a file system "
            "that is not answering?); try again later."
        ) from None
    except asyncio.CancelledError:
        # The request went away: the helper goes too, and is reaped in the background.
        _kill(proc)
        task = asyncio.ensure_future(proc.communicate())
        _reaping.add(task)
        task.add_done_callback(_reaping.discard)
        raise
    if proc.returncode == 0:
        return data
    if proc.returncode == _NOT_JOINED:
        raise Conflict(f"{path} could not be read: the reader could not join its control group.")
    reason = said.decode(errors="replace").strip()
    if proc.returncode == _NOT_REGULAR:
        raise Conflict(f"{path} is {reason}, not a regular file: only regular files are read.")
    if proc.returncode == _CANNOT_OPEN and reason == str(errno.ELOOP):
        raise Conflict(
            f"{path} is a symbolic link, not a regular file: output files are read without "
            "following links."
        )
    return None


def _kill(proc: asyncio.subprocess.Process) -> None:
    try:
        proc.kill()
    except ProcessLookupError:
        pass
