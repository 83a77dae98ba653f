"""The local backend with its state on a full file system: real ext4 on a loop device.

A workload's exit status is the launcher's to write, into the run directory under the data
directory; a full disk there must not turn a job that exited 0 into a failure, and where an
outcome truly cannot be known, the reason says so (and when), not a false story.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from allotment.backends.base import BackendUnavailable
from allotment.backends.local import space
from allotment.backends.local.backend import LocalBackend
from tests.backends.conftest import ROOT, local_backend
from tests.backends.test_contract import ended, started
from tests.backends.test_local import job
from tests.support.loopfs import BALLAST, fill, free, small_filesystem

pytestmark = pytest.mark.skipif(not ROOT, reason="needs root: a loop-mounted file system")


@pytest.fixture
def disk() -> Iterator[Path]:
    with small_filesystem(16, mode=0o700) as mountpoint:
        yield mountpoint


def _fill(disk: Path) -> None:
    """Full to the last block: once the ballast is written back, ext4 returns what it had
    reserved for it beyond what it used, so fill again."""
    fill(disk)
    fill(disk)


@pytest.fixture
async def on_disk(disk: Path) -> AsyncIterator[LocalBackend]:
    b = local_backend(disk / "state")
    yield b
    free(disk)
    for wid in await b.present():
        await b.reap(wid)
    await b.close()


async def test_jobs_that_exit_0_on_a_full_disk_are_recorded_so(
    on_disk: LocalBackend, disk: Path, shared: Path, new_id: Callable[[], int]
) -> None:
    go = shared / "go"
    wait_then = f"while [ ! -e {go} ]; do sleep 0.05; done"
    commands = [["sh", "-c", f"{wait_then}; exit {0 if i < 10 else 3}"] for i in range(11)]
    placements = {}
    for command in commands:
        wid = new_id()
        placements[wid] = (await started(on_disk, job(wid, "alice", command, shared)))[-1]
    fill(disk)
    go.touch()
    seen = {wid: await ended(on_disk, wid, p) for wid, p in placements.items()}
    outcomes = [(s.exit_code, s.failed, s.reason) for s in seen.values()]
    assert outcomes == [(0, False, "completed (exit status 0)")] * 10 + [
        (3, True, "exited with status 3")
    ]
    for wid, p in placements.items():
        await on_disk.release(wid, p)


async def test_a_start_on_a_full_disk_waits_and_says_why(
    on_disk: LocalBackend, disk: Path, shared: Path, new_id: Callable[[], int]
) -> None:
    _fill(disk)
    wid = new_id()
    with pytest.raises(BackendUnavailable) as raised:
        await started(on_disk, job(wid, "alice", ["true"], shared))
    assert str(disk) in str(raised.value) and "full" in str(raised.value)
    free(disk)
    p = (await started(on_disk, job(wid, "alice", ["true"], shared)))[-1]
    seen = await ended(on_disk, wid, p)
    assert (seen.exit_code, seen.failed) == (0, False)
    await on_disk.release(wid, p)


async def test_an_exit_status_that_could_not_be_written_is_told_as_unknown(
    on_disk: LocalBackend, disk: Path, shared: Path, new_id: Callable[[], int]
) -> None:
    """Its reserved place gone (as for a run started before space was reserved), the disk full
    when it ends: the outcome is unknown, and the reason says why and when."""
    go = shared / "go"
    wid = new_id()
    command = ["sh", "-c", f"while [ ! -e {go} ]; do sleep 0.05; done"]
    p = (await started(on_disk, job(wid, "alice", command, shared)))[-1]
    (Path(p["run"]) / "exit").unlink()
    fill(disk)
    go.touch()
    seen = await ended(on_disk, wid, p)
    assert (seen.exit_code, seen.failed) == (None, True)
    assert re.fullmatch(
        rf"outcome unknown: the data directory.s file system \({re.escape(str(disk / 'state'))}\) was "
        r"full at \d\d:\d\d UTC, and its exit status could not be recorded",
        seen.reason,
    ), seen.reason
    await on_disk.release(wid, p)
    await asyncio.sleep(0)


async def test_a_disk_that_fills_as_the_launcher_starts_delays_the_start(
    on_disk: LocalBackend,
    disk: Path,
    shared: Path,
    new_id: Callable[[], int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Full after the run directory was made, before the launcher claimed it (it records its
    pid first of all): nothing ran, and the start says why at once, not after a timeout."""
    spawn = on_disk._spawn

    def fill_then_spawn(*args: Any) -> int:
        _fill(disk)
        return spawn(*args)

    monkeypatch.setattr(on_disk, "_spawn", fill_then_spawn)
    wid, runs = new_id(), shared / "runs"
    s = job(wid, "alice", ["sh", "-c", f"echo ran >> {runs}"], shared)
    gen = on_disk.start(s)
    first = await gen.__anext__()
    with pytest.raises(BackendUnavailable, match="could not record its pid"):
        await gen.__anext__()
    monkeypatch.undo()
    free(disk)
    p = [p async for p in on_disk.start(s, resume=first)][-1]
    assert p["attempt"] == first["attempt"] + 1
    seen = await ended(on_disk, wid, p)
    assert (seen.exit_code, seen.failed) == (0, False)
    assert runs.read_text() == "ran\n", "it ran once"
    await on_disk.release(wid, p)


def test_a_service_not_run_as_root_is_full_where_only_root_could_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # ext4 keeps blocks back for root: a service of its own user (and its launchers) meets
    # ENOSPC while they still show free, and ``full`` said "not full" (f_bfree).
    with small_filesystem(32, reserved=10) as fs:  # 3.2 MB for root alone
        _fill(fs)
        ballast = fs / BALLAST
        os.truncate(ballast, ballast.stat().st_size - 2 * 2**20)  # 2 MB free, root's only
        assert not space.full(fs), "root may still write there"
        monkeypatch.setattr(os, "geteuid", lambda: 1000)
        assert space.full(fs)
