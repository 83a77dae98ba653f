"""The nudge pipe between API processes and the controller's process: a nudge arrives at once,
many share one wake-up, and nothing fails when no controller listens, when the pipe is full,
when the listener went away, or when an earlier version left a plain file in its place."""

from __future__ import annotations

import asyncio
import logging
import stat
from pathlib import Path

import pytest

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


async def test_an_empty_directory_in_its_place_is_replaced_by_the_pipe(tmp_path: Path) -> None:
    nudge_path(tmp_path).mkdir()
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


async def test_what_cannot_be_removed_is_said_and_the_controller_starts_without_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A directory with something in it: unlink() raised, and the controller could not start.
    (nudge_path(tmp_path) / "kept").mkdir(parents=True)
    listener = NudgeListener(tmp_path, lambda: None)
    with caplog.at_level(logging.WARNING, "allotment.controller"):
        listener.open()
    listener.close()
    nudge_other(tmp_path)  # an API process's nudge finds no pipe: dropped, no error
    assert nudge._writers == {}
    assert (nudge_path(tmp_path) / "kept").is_dir()
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "in the way of the controller's nudge pipe" in said[0]
