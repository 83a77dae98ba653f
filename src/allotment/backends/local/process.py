"""Processes of this machine: identity that survives pid reuse, and the launch wrapper.

A pid alone is not an identity (pids are reused); a pid plus the process's start time (field 22
of ``/proc/<pid>/stat``, in clock ticks since boot) is.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "PRIVATE_DIRS",
    "ROOT_ENVIRONMENT",
    "SETUP_FAILURES",
    "USER_PART",
    "WRAPPER",
    "alive",
    "environment_script",
    "private_mounts",
    "program",
    "start_time",
    "under_private",
]


def start_time(pid: int, proc: Path = Path("/proc")) -> int | None:
    """Start time of a live (not zombie) process, or None when there is none."""
    try:
        text = (proc / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name may hold spaces and parentheses: fields start after the last ")".
    fields = text[text.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def alive(pid: int, started: int | None) -> bool:
    now = start_time(pid)
    return now is not None and (started is None or now == started)


#: Runs as root (or as the service's user in single-user mode), in a session of its own so that
#: it outlives restarts of the service (after one, init is its parent and reaps it), and, as
#: root, in mount and IPC namespaces of its own (``unshare --mount --ipc``). Its environment is fixed
#: (``ROOT_ENVIRONMENT``) and every program it runs is named by absolute path: nothing the user
#: asked for reaches it (a ``PATH`` or ``LD_PRELOAD`` of the user's would otherwise pick the
#: program or the library root runs).
#:
#: $1 run directory (the service's, mode 0700) · $2 cgroup.procs files, ":"-separated ·
#: $3 the command that drops privileges (e.g. "/usr/bin/setpriv --reuid=1001 --regid=1001
#: --init-groups --inh-caps=-all --"), or "" · $4 the mount program, or "" for no private /tmp
#: and /dev/shm · $5 the fstab of those two mounts (``private_mounts``; one ``mount -a`` costs
#: half of two mounts) · then ``USER_PART`` with its own arguments. Descriptor 5 holds the workload's environment
#: (``environment_script``).
#:
#: 1. Claim the attempt: create ``pid`` exclusively. If it exists, the service already
#:    claimed this attempt as dead after a crash: run nothing. The launcher works inside its
#:    run directory, so the private /tmp mounted below cannot hide it.
#: 2. Join the workload's cgroups before anything of the user's runs, so no fork escapes.
#: 3. Give the workload its own /tmp (a directory on disk, bind-mounted: as Slurm's
#:    job_container/tmpfs does) and its own /dev/shm (a tmpfs, whose pages count against the
#:    workload's memory), both nosuid and nodev, and System V shared memory that is removed
#:    once no process is attached (``shm_rmid_forced``, per IPC namespace). They vanish with
#:    it: the mounts and IPC objects with the namespaces when its last process ends, the
#:    directory when the service releases the workload.
#: 4. Say it is ready (``joined``, and a byte on fd 3, a pipe the service waits on instead of
#:    polling; fd 4 is the pipe's other end, so that the write cannot raise SIGPIPE if the
#:    service died meanwhile): from then on a stop finds every process of the workload.
#:    Neither fd reaches the user's command.
#: 5. Run the user's part in the foreground with privileges dropped; it says on fd 6
#:    (``started``, which only root can write otherwise) when its own set-up is done, so an
#:    exit status of the command that happens to equal a set-up failure's is not taken for one. The launcher *catches*
#:    INT, HUP and TERM (a stop signals the whole group): a caught signal is back at its
#:    default in the exec'd command, where an ignored one would stay ignored, and the shell
#:    runs the trap only once the command has ended. The service spawns the launcher with
#:    every signal at its default.
#: 6. Record its exit status; the service cannot read an exit status from a process it is not
#:    the parent of (after a restart), so it reads this file, and only once the launcher is
#:    gone (a few bytes in one write: no reader sees it half written). The service made the
#:    file empty with a block reserved past its end (``space.reserve``), so the append needs
#:    no room from a file system that may be full by now; ``started`` likewise.
WRAPPER = r"""
trap : INT HUP TERM
run=$1 procs=$2 drop=$3 mount=$4 mounts=$5
shift 5
cd "$run" || exit 1
set -C
{ echo $$ > pid; } 2>/dev/null || exit 0
set +C
IFS=:
for f in $procs; do echo $$ > "$f" || { echo 255 >> exit; exit 1; }; done
unset IFS
if [ -n "$mount" ]; then
  { "$mount" --all --fstab "$mounts" && echo 1 > /proc/sys/kernel/shm_rmid_forced; } ||
    { echo 251 >> exit; exit 1; }
fi
: > joined
echo >&3 2>/dev/null; exec 3>&- 4<&-
$drop "$@" 6>>started
echo $? >> exit
"""

#: The user's part, as the user: into the working directory, then output appended to files
#: opened *as the user* (a root process opening files in a user's directory could be led
#: through a symlink; relative paths are relative to the working directory, as in Slurm), then
#: the workload's environment (fd 5, read only now, by the user's own shell), then word that
#: the set-up is done (fd 6), then the command. Arguments: stdout, stderr, directory,
#: command….
USER_PART = r"""
cd "$3" || exit 254
unset OLDPWD
{ true >>"$1" && true >>"$2"; } 2>/dev/null || exit 253
exec >>"$1" 2>>"$2" </dev/null
shift 3
[ -r /proc/self/fd/5 ] || exit 252
. /proc/self/fd/5
exec 5<&-
echo >&6; exec 6>&-
exec "$@"
"""

#: The launcher's whole environment: nothing of the user's, nothing of the service's.
ROOT_ENVIRONMENT = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}

#: Exit statuses of the launcher and ``USER_PART`` themselves, before the command ran.
SETUP_FAILURES = {
    251: "could not make its private /tmp and /dev/shm",
    252: "could not read its environment",
    253: "could not open its output files",
    254: "could not enter its working directory",
    255: "could not join its control group",
}

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def environment_script(env: Mapping[str, str]) -> bytes:
    """``env`` as the ``export`` lines the user's shell sources (values quoted for sh, so they
    are data, whatever they hold). Raises ValueError for a name sh cannot export."""
    lines = []
    for name, value in env.items():
        if not _NAME.match(name):
            raise ValueError(f"{name!r} is not an environment variable name")
        lines.append(f"export {name}={shlex.quote(value)}\n")
    return "".join(lines).encode()


#: Directories each workload has a private one of (``private_mounts``).
PRIVATE_DIRS = ("/tmp", "/dev/shm")


def under_private(path: str) -> str | None:
    """The private directory (``PRIVATE_DIRS``) that ``path`` lies in, or None."""
    return next((d for d in PRIVATE_DIRS if path == d or path.startswith(d + "/")), None)


def private_mounts(tmp: str, memory: int) -> str:
    """The fstab of a workload's private /tmp (``tmp`` bound there) and /dev/shm (a tmpfs of
    ``memory`` bytes), both nosuid and nodev."""
    return (
        f"{_fstab_field(tmp)} /tmp none bind,nosuid,nodev 0 0\n"
        f"allot-shm /dev/shm tmpfs size={memory},mode=1777,nosuid,nodev 0 0\n"
    )


def _fstab_field(text: str) -> str:
    """``text`` as one fstab field: whitespace and backslashes as octal escapes."""
    return "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in text)


def program(name: str, places: tuple[str, ...] = ("/usr/bin", "/bin", "/usr/sbin", "/sbin")) -> str:
    """The absolute path of a system program, looked up once in fixed places (never ``PATH``)."""
    for place in places:
        path = os.path.join(place, name)
        if os.access(path, os.X_OK):
            return path
    raise FileNotFoundError(f"{name} not found in {', '.join(places)}")
