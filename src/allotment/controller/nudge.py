"""Nudges between processes: an API worker without the controller asks the one that has it
to schedule soon, by touching a file whose change the scheduling loop watches for."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["nudge_other", "nudge_path"]


def nudge_path(data_dir: Path) -> Path:
    return data_dir / "controller.nudge"


def nudge_other(data_dir: Path) -> None:
    """From a process without the controller: ask the one that has it to schedule soon."""
    path = nudge_path(data_dir)
    try:
        os.utime(path)
    except FileNotFoundError:
        with contextlib.suppress(OSError):
            path.touch(mode=0o600)
