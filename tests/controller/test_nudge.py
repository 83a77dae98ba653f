"""The nudge pipe between API processes and the controller's process: a nudge arrives at once,
many share one wake-up, and nothing fails when no controller listens, when the pipe is full,
when the listener went away, or when an earlier version left a plain file in its place."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

from allotment.controller import nudge
from allotment.controller.nudge import NudgeListener, nudge_other, nudge_path


async def _woken(woken: asyncio.Event) -> bool:
    try:
        async with asyncio.timeout(2):
            await woken.wait()
    except TimeoutError:
        return False
    return True


async def test_a_nudge_wakes_the_listener(tmp_path: Path) -> None:
    woken = asyncio.Event()
    listener = NudgeListener(tmp_path, woken.set)
    listener.open()
    try:
        assert stat.S_IMODE(nudge_path(tmp_path).stat().st_mode) == 0o600
        for _ in range(100):
            nudge_other(tmp_path)
        assert await _woken(woken)
    finally:
        listener.close()
        nudge._writers.clear()


def test_no_listener_no_pipe_no_error(tmp_path: Path) -> None:
    nudge_other(tmp_path)  # no pipe at all
    (tmp_path / "controller.nudge").write_text("")  # an earlier version's file
    nudge_other(tmp_path)
    assert nudge._writers == {}


async def test_an_earlier_versions_file_is_replaced_by_the_pipe(tmp_path: Path) -> None:
    nudge_path(tmp_path).write_text("")
    woken = asyncio.Event()
    listener = NudgeListener(tmp_path, woken.set)
    listener.open()
    try:
        assert stat.S_ISFIFO(nudge_path(tmp_path).stat().st_mode)
        nudge_other(tmp_path)
        assert await _woken(woken)
    finally:
        listener.close()
        nudge._writers.clear()


async def test_a_full_pipe_and_a_listener_gone_are_no_errors(tmp_path: Path) -> None:
    listener = NudgeListener(tmp_path, lambda: None)
    listener.open()
    try:
        for _ in range(100_000):  # more than a pipe holds, nothing reading meanwhile
            nudge_other(tmp_path)
    finally:
        listener.close()
    nudge_other(tmp_path)  # its reader is gone: the writing end is dropped
    assert nudge._writers == {}
    woken = asyncio.Event()
    again = NudgeListener(tmp_path, woken.set)  # a controller started again
    again.open()
    try:
        nudge_other(tmp_path)
        assert await _woken(woken)
    finally:
        again.close()
        nudge._writers.clear()
