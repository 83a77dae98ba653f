"""A Python that every user can run.

Some programs run as a user's own POSIX account: sessions (from the environment ``allot up``
builds) and the reader of a job's output files. The interpreter the service runs on often is
not one they can execute (``/root/.pyenv``, a virtual environment under ``/root``, which is
0700), so these find one that is, and say which directory is in the way when there is none.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

__all__ = ["closed_at", "python_for_everyone", "runnable_by_everyone"]

#: Debian's interpreter: the fallback when the service's own is out of other users' reach.
SYSTEM_PYTHON = "/usr/bin/python3"


def closed_at(path: Path) -> Path | None:
    """The first of ``/`` and the directories below it down to ``path`` (and ``path`` itself)
    that other users cannot traverse or execute; None when they can reach and run ``path``.

    Executing a symlink (a virtual environment's ``bin/python``) traverses the directories of
    the path as written, then those of its target, and runs the target: all are checked. A
    path that does not exist is closed where it stops existing.
    """
    written = Path(os.path.abspath(path))
    resolved = written.resolve()
    for p in [*reversed(written.parents), *reversed(resolved.parents), resolved]:
        try:
            if not os.stat(p).st_mode & stat.S_IXOTH:
                return p
        except OSError:
            return p
    return None


def runnable_by_everyone(path: Path) -> bool:
    """True when any user can execute ``path``: it and each directory above it are o+x."""
    return closed_at(path) is None


def python_for_everyone() -> str:
    """An interpreter every user can execute, resolved to the file itself: the service's own
    when it can, else Debian's."""
    for candidate in (sys.executable, SYSTEM_PYTHON):
        if candidate and runnable_by_everyone(Path(candidate)):
            return str(Path(candidate).resolve())
    raise RuntimeError(
        f"No Python that every user can run was found ({sys.executable} is not, and neither "
        f"is {SYSTEM_PYTHON}): install Debian's python3 and python3-venv."
    )
