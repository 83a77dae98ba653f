"""Room in the data directory for what a run must write when that file system may be full.

A launcher records its workload's exit status in the run directory, and the service reads
nothing else to learn it (after a restart the launcher is not its child). On a full file
system a new file gets an inode but no block, so that write would fail and a job that exited
0 would be told as one that vanished. The block is therefore taken when the run starts
(``reserve``: allocated past the end of an empty file, ``fallocate(FALLOC_FL_KEEP_SIZE)``), and
the launcher's later append lands in it without asking the file system for more. The service
writes the rest of a run directory before anything of the user's runs, so a full disk is met
there (``full_disk``), where waiting costs nothing.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import time
from pathlib import Path

__all__ = ["full", "full_disk", "no_space", "reserve"]

log = logging.getLogger("allotment.local")

#: fallocate(2): allocate without changing the file's size.
_KEEP_SIZE = 0x01
#: Below this much free space a file system is called full: a launcher's few bytes need a
#: block, and what is left of the last megabyte goes to whoever asks first.
FULL_BELOW = 2**20

_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_fallocate.restype = ctypes.c_int
_warned = False


def reserve(path: Path) -> None:
    """Create ``path`` empty, with one block allocated for what will be appended to it.

    Raises OSError (ENOSPC) when the file system cannot give that block. Where it cannot
    allocate ahead (no ``fallocate`` support), the file is made without: logged once."""
    global _warned
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        if _fallocate(fd, _KEEP_SIZE, 0, 1) != 0:
            code = ctypes.get_errno()
            if code in (errno.ENOSPC, errno.EDQUOT):
                raise OSError(code, os.strerror(code), str(path))
            if not _warned:
                _warned = True
                log.warning(
                    "%s cannot allocate ahead (%s): on a full disk an exit status may not be "
                    "recorded",
                    path.parent.parent,
                    os.strerror(code),
                )
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def no_space(e: BaseException) -> bool:
    """Whether ``e`` is a file system out of room (or its quota)."""
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


def full(path: Path) -> bool:
    """Whether the file system holding ``path`` has less than ``FULL_BELOW`` free for this
    process's user: counting what only root may use (ext4 keeps 5 % back) where the service,
    and so its launchers, run as root, and not counting it otherwise, where ENOSPC comes while
    that reserve still shows free."""
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    free = st.f_bfree if os.geteuid() == 0 else st.f_bavail
    return free * st.f_frsize < FULL_BELOW


def full_disk(directory: Path, what: str) -> str:
    """The message for a write in ``directory`` (the data directory) refused for want of
    room: what could not be done, where, since when, and what to do."""
    return (
        f"the data directory's file system ({directory}) is full (at "
        f"{time.strftime('%H:%M', time.gmtime())} UTC): {what} until there is room; free "
        "space there"
    )
