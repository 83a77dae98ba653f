"""Processes of this machine: identity that survives pid reuse, and the launch wrapper.

A pid alone is not an identity (pids are reused); a pid plus the process's start time (field 22
of ``/proc/<pid>/stat``, in clock ticks since boot) is.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["SETUP_FAILURES", "USER_PART", "WRAPPER", "alive", "start_time"]


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
#: it outlives restarts of the service (after one, init is its parent and reaps it).
#:
#: $1 run directory (the service's, mode 0700) · $2 cgroup.procs files, ":"-separated ·
#: $3 the command that drops privileges (e.g. "setpriv --reuid 1001 --regid 1001
#: --init-groups --inh-caps=-all --"), or "" · then ``USER_PART`` with its own arguments.
#:
#: 1. Claim the attempt: create ``pid`` exclusively. If it exists, the service already
#:    claimed this attempt as dead after a crash: run nothing.
#: 2. Join the workload's cgroups before anything of the user's runs, so no fork escapes, and
#:    say so (``joined``, and a byte on fd 3, a pipe the service waits on instead of polling;
#:    fd 4 is the pipe's other end, so that the write cannot raise SIGPIPE if the service
#:    died meanwhile): from then on a stop finds every process of the workload. Neither fd
#:    reaches the user's command.
#: 3. Run the user's part in the foreground with privileges dropped. The launcher *catches*
#:    INT, HUP and TERM (a stop signals the whole group): a caught signal is back at its
#:    default in the exec'd command, where an ignored one would stay ignored, and the shell
#:    runs the trap only once the command has ended. The service spawns the launcher with
#:    every signal at its default. The environment is the launcher's own, which the service
#:    builds from nothing: passed that way (not as arguments) it stays out of
#:    ``/proc/<pid>/cmdline``, which every user can read.
#: 4. Record its exit status; the service cannot read an exit status from a process it is not
#:    the parent of (after a restart), so it reads this file, and only once the launcher is
#:    gone (a few bytes in one write: no reader sees it half written).
#:
#: No ``env`` and no ``mv``: each program it runs costs ~1.5 ms of a start on a busy machine.
WRAPPER = r"""
trap : INT HUP TERM
cd /
run=$1 procs=$2 drop=$3
shift 3
set -C
{ echo $$ > "$run/pid"; } 2>/dev/null || exit 0
set +C
IFS=:
for f in $procs; do echo $$ > "$f" || { echo 255 > "$run/exit"; exit 1; }; done
unset IFS
: > "$run/joined"
echo >&3 2>/dev/null; exec 3>&- 4<&-
$drop "$@"
echo $? > "$run/exit"
"""

#: The user's part, as the user: into the working directory, then output appended to files
#: opened *as the user* (a root process opening files in a user's directory could be led
#: through a symlink; relative paths are relative to the working directory, as in Slurm), then
#: the command. Arguments: stdout, stderr, directory, command….
USER_PART = r"""
cd "$3" || exit 254
unset OLDPWD
{ true >>"$1" && true >>"$2"; } 2>/dev/null || exit 253
exec >>"$1" 2>>"$2" </dev/null
shift 3
exec "$@"
"""

#: Exit statuses of ``USER_PART`` itself, before the command ran.
SETUP_FAILURES = {
    253: "could not open its output files",
    254: "could not enter its working directory",
    255: "could not join its control group",
}
