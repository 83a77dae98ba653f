"""Nudges between processes: an API process asks the controller's process to schedule soon.

The controller runs in a process of its own (``controller/process.py``), so a submission
reaches it through a named pipe in the data directory (mode 0600, in a directory only the
service can enter): the API writes one byte, the controller's event loop wakes at once. A
byte that finds the pipe full is not needed (a nudge is already waiting); a nudge with no
controller listening is dropped (the controller schedules at least every
``scheduling.interval`` and reads the whole queue at start, so nothing waits for ever).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

__all__ = ["NudgeListener", "nudge_other", "nudge_path"]

log = logging.getLogger("allotment.controller")

#: Open writing ends, by path: one open per process, not one per submission.
_writers: dict[Path, int] = {}


def nudge_path(data_dir: Path) -> Path:
    return data_dir / "controller.nudge"


def nudge_other(data_dir: Path) -> None:
    """From a process without the controller: ask the one that has it to schedule soon."""
    path = nudge_path(data_dir)
    fd = _writers.get(path)
    if fd is None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return  # no controller listens (ENXIO), or none ever made the pipe (ENOENT)
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            os.close(fd)
            return  # an earlier version's nudge file: its controller is gone
        _writers[path] = fd
    try:
        os.write(fd, b"\0")
    except BlockingIOError:
        pass  # the pipe is full: the controller has nudges enough waiting
    except OSError:  # EPIPE: the controller that listened is gone; open again next time
        del _writers[path]
        os.close(fd)


class NudgeListener:
    """The controller's end: calls ``on_nudge`` in the event loop when a nudge arrives."""

    def __init__(self, data_dir: Path, on_nudge: Callable[[], None]) -> None:
        self.path = nudge_path(data_dir)
        self.on_nudge = on_nudge
        self._read: int | None = None
        self._keep: int | None = None

    def open(self) -> None:
        """Make the pipe if need be and listen on it in the running loop."""
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None and not stat.S_ISFIFO(mode):
            # An earlier version's nudge file, or anything else: not worth a controller that
            # cannot start. Without the pipe it schedules every ``scheduling.interval``.
            try:
                if stat.S_ISDIR(mode):
                    self.path.rmdir()
                else:
                    self.path.unlink()
            except OSError as e:
                log.warning(
                    "%s is in the way of the controller's nudge pipe and cannot be removed "
                    "(%s): submissions are scheduled at the next cycle, not at once, until it "
                    "is removed and the service restarted",
                    self.path,
                    e.strerror,
                )
                return
            mode = None
        if mode is None:
            with contextlib.suppress(FileExistsError):
                os.mkfifo(self.path, 0o600)
        flags = os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
        self._read = os.open(self.path, os.O_RDONLY | flags)
        # A writing end of its own: without one, the pipe reads as ended whenever no API
        # process has it open, and the loop would be woken for ever.
        self._keep = os.open(self.path, os.O_WRONLY | flags)
        asyncio.get_running_loop().add_reader(self._read, self._ready)

    def _ready(self) -> None:
        assert self._read is not None
        try:
            while os.read(self._read, 4096):
                pass
        except BlockingIOError:
            pass
        except OSError as e:
            if e.errno != errno.EAGAIN:
                log.warning("reading the nudge pipe %s failed: %s", self.path, e)
        self.on_nudge()

    def close(self) -> None:
        if self._read is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._read)
            os.close(self._read)
            self._read = None
        if self._keep is not None:
            os.close(self._keep)
            self._keep = None
