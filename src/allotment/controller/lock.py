"""The installation's locks: exactly one controller runs per installation, and one
installation per name on a machine.

With ``allot serve --workers N`` every worker process tries the lock on
``<data_dir>/controller.lock``; only its holder runs the controller. Its holder then claims the
installation's name machine-wide (``CLAIMS/<name>.lock``): every cgroup and private /tmp the
installation makes carries that name, and its recovery reaps what it finds under it, so two
installations given one name (``service.installation``) would reap each other's workloads. The
second is refused, saying whose the name is. The kernel drops both locks with the process,
however it ends, so a killed controller never blocks the next one.

A restore must not run beside any process of the service, not only its controller: an API
process would keep writing into the database being set aside (acknowledged submissions lost
from the restored one), and a service starting would migrate the database being replaced. So
``allot serve`` holds ``<data_dir>/service.lock`` shared for its whole life, from before it
migrates (``hold_service``; with or without the controller), and ``allot restore`` takes it
exclusive (``take_service``): refused while any service runs, and no service starts while a
restore runs.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from allotment.installation import check_name

__all__ = [
    "CLAIMS",
    "ControllerLock",
    "NameInUse",
    "Restoring",
    "hold_service",
    "lock_path",
    "service_lock_path",
    "take_lock",
    "take_service",
]

#: Where installations claim their names: machine-wide as root (whose workloads' groups and
#: private /tmp are machine-wide); per user otherwise, in a directory of the user's own (not
#: under /tmp, where another user could plant a link where a claim will be made).
CLAIMS = (
    Path("/run/allotment/installations")
    if os.geteuid() == 0
    else Path.home() / ".local" / "state" / "allotment" / "installations"
)


class NameInUse(RuntimeError):
    """Another installation on this machine runs under the same name."""


def lock_path(data_dir: Path) -> Path:
    return data_dir / "controller.lock"


class ControllerLock:
    """The held locks; ``close`` gives them up (as the kernel does when the process dies)."""

    def __init__(self, *files: IO[str]) -> None:
        self._files = files

    def close(self) -> None:
        for f in self._files:
            f.close()


def _flock(path: Path, mode: int = fcntl.LOCK_EX) -> IO[str] | None:
    # Held open for the controller's life; made 0600 (a claim names a data directory). Never
    # through a link: a claim is truncated and written.
    flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW
    f = os.fdopen(os.open(path, flags, 0o600), "a+")
    try:
        fcntl.flock(f, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def take_lock(data_dir: Path, name: str, claims: Path | None = None) -> ControllerLock | None:
    """Take the installation's controller lock and claim its ``name`` (in ``claims``, default
    ``CLAIMS``); None when another process of this installation holds the lock. Raises
    NameInUse when another installation holds the name."""
    check_name(name)  # it names a file in ``claims``
    path = lock_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    mine = _flock(path)
    if mine is None:
        return None
    os.chmod(path, 0o600)
    claims = claims or CLAIMS
    claims.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        claim = _flock(claims / f"{name}.lock")
    except OSError as e:  # a link (O_NOFOLLOW), or no way to make it
        mine.close()
        raise NameInUse(
            f"cannot claim installation name {name!r}: {claims / f'{name}.lock'}: {e.strerror}; "
            "it must be a plain file (remove what is there)"
        ) from None
    here = str(data_dir.resolve())
    if claim is None:
        mine.close()
        try:
            whose = (claims / f"{name}.lock").read_text().strip() or "another service"
        except OSError:
            whose = "another service"
        raise NameInUse(
            f"installation name {name!r} is in use on this machine by the service whose data "
            f"directory is {whose}; an installation reaps what it finds under its name, so "
            f"give the one at {here} another name (service.installation in its policy, or "
            "$ALLOTMENT_INSTALLATION)"
        )
    claim.seek(0)
    claim.truncate()
    claim.write(here + "\n")
    claim.flush()
    return ControllerLock(mine, claim)


class Restoring(RuntimeError):
    """A restore of this installation's database is under way: no service may start."""


def service_lock_path(data_dir: Path) -> Path:
    return data_dir / "service.lock"


def hold_service(data_dir: Path) -> ControllerLock:
    """The service lock, shared, for a running service's whole life (module docstring);
    raises Restoring while ``allot restore`` holds it."""
    path = service_lock_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    held = _flock(path, fcntl.LOCK_SH)
    if held is None:
        raise Restoring(
            f"a restore of this installation's database is under way (it holds {path}); "
            "start the service again once `allot restore` has finished"
        )
    return ControllerLock(held)


def take_service(data_dir: Path) -> ControllerLock | None:
    """The service lock, exclusive, for a restore; None while any service of the
    installation runs (``allot serve``, with or without its controller)."""
    path = service_lock_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    held = _flock(path)
    return None if held is None else ControllerLock(held)
