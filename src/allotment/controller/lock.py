"""The installation's controller lock: exactly one controller runs per installation.

With ``allot serve --workers N`` every worker process tries the lock on
``<data_dir>/controller.lock``; only its holder runs the controller. The kernel drops the lock
with the process, however it ends, so a killed controller never blocks the next one.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

__all__ = ["ControllerLock", "lock_path", "take_lock"]


def lock_path(data_dir: Path) -> Path:
    return data_dir / "controller.lock"


class ControllerLock:
    """The held lock; ``close`` gives it up (as the kernel does when the process dies)."""

    def __init__(self, file: IO[str]) -> None:
        self._file = file

    def close(self) -> None:
        self._file.close()


def take_lock(data_dir: Path) -> ControllerLock | None:
    """Take the installation's controller lock; None when another process holds it."""
    path = lock_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    f = open(path, "a")  # noqa: SIM115 - held open for the controller's life
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    os.chmod(path, 0o600)
    return ControllerLock(f)
