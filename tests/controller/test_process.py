"""The controller's own process: the child's side (``run_controller``: started, standby and
taking over, a name another installation holds) on SQLite, and the supervisor's side
(``ControllerProcess``) with a stand-in child of a few lines, so no test here pays for a real
controller's start. `tests/integration/test_service_processes.py` runs the real thing."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from allotment.controller import lock, process
from allotment.controller.process import (
    ControllerProcess,
    ControllerStartFailed,
    ProcessSettings,
    run_controller,
)
from allotment.db.engine import Database

#: Reads its settings, keeps them in argv[2], reports argv[1] (unless "silent") and then
#: waits for SIGTERM (exit 0, from its start), or exits at once with argv[3] when given.
STAND_IN = """
import os, signal, sys, time
# Like the real controller, ready for SIGTERM before it says it started: a test may send it
# as soon as it has read the line.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
settings = sys.stdin.read()
open(sys.argv[2], "w").write(settings)
if sys.argv[1] != "silent":
    os.write(int(os.environ["ALLOTMENT_CONTROLLER_STATUS_FD"]), (sys.argv[1] + "\\n").encode())
if len(sys.argv) > 3:
    sys.exit(int(sys.argv[3]))
while True:
    time.sleep(1)
"""

SECRET = "postgresql+asyncpg://allotment:s3cret-pw@db.example/allotment"


def stand_in(tmp_path: Path, report: str, *exit_code: str) -> list[str]:
    return [sys.executable, "-c", STAND_IN, report, str(tmp_path / "settings.json"), *exit_code]


@pytest.fixture
def settings(tmp_path: Path) -> ProcessSettings:
    return ProcessSettings(database_url=SECRET, data_dir=str(tmp_path / "data"))


@contextlib.contextmanager
def supervised(supervisor: ControllerProcess) -> Iterator[ControllerProcess]:
    try:
        yield supervisor
    finally:
        supervisor.stop(grace=5)


def wait_for(check: object, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


def test_settings_go_on_stdin_never_on_the_command_line(
    tmp_path: Path, settings: ProcessSettings
) -> None:
    with supervised(ControllerProcess(settings, stand_in(tmp_path, "started"))) as s:
        assert s.start() == "started"
        assert s.proc is not None
        cmdline = Path(f"/proc/{s.proc.pid}/cmdline").read_bytes()
        assert b"s3cret-pw" not in cmdline
        assert ProcessSettings.loads((tmp_path / "settings.json").read_text()) == settings


def test_a_standby_is_reported(tmp_path: Path, settings: ProcessSettings) -> None:
    with supervised(ControllerProcess(settings, stand_in(tmp_path, "standby"))) as s:
        assert s.start() == "standby"


def test_a_child_that_cannot_start_fails_the_start_with_its_reason(
    tmp_path: Path, settings: ProcessSettings
) -> None:
    command = stand_in(tmp_path, "failed: the name lab is used by another installation", "3")
    with pytest.raises(ControllerStartFailed, match="could not start: the name lab is used"):
        ControllerProcess(settings, command).start()


def test_a_child_that_ends_without_a_word_fails_the_start(
    tmp_path: Path, settings: ProcessSettings
) -> None:
    with pytest.raises(ControllerStartFailed, match="ended before it started"):
        ControllerProcess(settings, stand_in(tmp_path, "silent", "1")).start()


def test_a_child_that_fails_is_started_again_and_none_after_the_stop(
    tmp_path: Path, settings: ProcessSettings
) -> None:
    s = ControllerProcess(settings, stand_in(tmp_path, "started"), backoff=0.05)
    with supervised(s):
        s.start()
        assert s.proc is not None
        first = s.proc.pid
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: s.proc is not None and s.proc.pid != first)
    last = s.proc
    assert last is not None and last.poll() is not None  # stopped with the service
    time.sleep(0.3)
    assert s.proc is last  # none started after


def test_a_child_that_stopped_as_asked_is_not_started_again(
    tmp_path: Path, settings: ProcessSettings
) -> None:
    s = ControllerProcess(settings, stand_in(tmp_path, "started"), backoff=0.05)
    with supervised(s):
        s.start()
        assert s.proc is not None
        first = s.proc
        first.terminate()  # SIGTERM to the child alone: as systemd sends it to every process
        first.wait()
        time.sleep(0.3)
        assert s.proc is first


# -- the child's side ---------------------------------------------------------------------


async def _migrated(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"
    db = Database(url)
    await db.upgrade()
    await db.dispose()
    return url


async def test_a_second_controller_waits_and_takes_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(process, "STANDBY_SECONDS", 0.05)
    url = await _migrated(tmp_path)
    settings = ProcessSettings(database_url=url, data_dir=str(tmp_path / "data"))
    first_out, second_out = io.StringIO(), io.StringIO()
    stop_first, stop_second = asyncio.Event(), asyncio.Event()
    first = asyncio.create_task(run_controller(settings, first_out, stop_first))
    for _ in range(200):
        if first_out.getvalue():
            break
        await asyncio.sleep(0.01)
    second = asyncio.create_task(run_controller(settings, second_out, stop_second))
    for _ in range(200):
        if second_out.getvalue():
            break
        await asyncio.sleep(0.01)
    assert (first_out.getvalue(), second_out.getvalue()) == ("started\n", "standby\n")
    stop_first.set()
    assert await first == 0
    for _ in range(500):
        if second_out.getvalue().endswith("started\n"):
            break
        await asyncio.sleep(0.01)
    assert second_out.getvalue() == "standby\nstarted\n"
    stop_second.set()
    assert await second == 0


async def test_a_name_another_installation_holds_is_a_failure_said(tmp_path: Path) -> None:
    url = await _migrated(tmp_path)
    other = lock.take_lock(tmp_path / "other", "lab")
    assert other is not None
    try:
        out = io.StringIO()
        settings = ProcessSettings(
            database_url=url, data_dir=str(tmp_path / "data"), installation="lab"
        )
        assert await run_controller(settings, out, asyncio.Event()) == 3
        assert out.getvalue().startswith("failed: ") and "lab" in out.getvalue()
    finally:
        other.close()


async def test_sigterm_stops_it_cleanly(tmp_path: Path) -> None:
    url = await _migrated(tmp_path)
    settings = ProcessSettings(database_url=url, data_dir=str(tmp_path / "data"))
    out = io.StringIO()
    task = asyncio.create_task(process._run(settings, out))
    for _ in range(500):
        if out.getvalue():
            break
        await asyncio.sleep(0.01)
    assert out.getvalue() == "started\n"  # its signal handlers are in place by now
    os.kill(os.getpid(), signal.SIGTERM)
    assert await task == 0
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_a_restart_that_cannot_spawn_is_tried_again(
    tmp_path: Path, settings: ProcessSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Out of descriptors (EMFILE) as the child is started again: the watcher logs it and
    # tries again; it used to end there, and the controller was never started again.
    s = ControllerProcess(settings, stand_in(tmp_path, "started"), backoff=0.05)
    with supervised(s):
        s.start()
        assert s.proc is not None
        first = s.proc.pid
        spawn, refused = s._spawn, 0

        def emfile() -> tuple[subprocess.Popen[bytes], int]:
            nonlocal refused
            if refused < 2:
                refused += 1
                raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
            return spawn()

        monkeypatch.setattr(s, "_spawn", emfile)
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: s.proc is not None and s.proc.pid != first)
        assert refused == 2


async def test_a_database_down_at_its_start_is_waited_out_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A restart or a takeover while the database is down: it starts once the database answers
    # (here: once its file can be opened), where it used to end with a traceback.
    made = await _migrated(tmp_path)
    path = tmp_path / "later.sqlite"
    path.mkdir()  # a directory where the database should be: it cannot be opened
    url = f"sqlite+aiosqlite:///{path}"
    settings = ProcessSettings(database_url=url, data_dir=str(tmp_path / "data"))
    out, stop = io.StringIO(), asyncio.Event()
    with caplog.at_level(logging.INFO, "allotment.controller"):
        task = asyncio.create_task(run_controller(settings, out, stop))
        for _ in range(200):
            if any(r.getMessage().startswith("controller's start: ") for r in caplog.records):
                break
            await asyncio.sleep(0.01)
        assert out.getvalue() == "" and not task.done()
        path.rmdir()
        Path(made.split("///", 1)[1]).rename(path)
        for _ in range(500):
            if out.getvalue():
                break
            await asyncio.sleep(0.01)
        assert out.getvalue() == "started\n"
        stop.set()
        assert await task == 0
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("controller's")]
    assert len(said) == 2, said
    assert "the database is unavailable" in said[0]
    assert "the database is back after" in said[1]
    assert not [r for r in caplog.records if r.exc_info]


def test_a_child_that_cannot_be_started_or_given_its_settings_leaves_nothing_open(
    tmp_path: Path, settings: ProcessSettings
) -> None:
    # What the watcher meets and tries again after: each failed try must not leak a pipe.
    open_fds = len(os.listdir("/proc/self/fd"))
    with pytest.raises(FileNotFoundError):
        ControllerProcess(settings, [str(tmp_path / "no-such-program")])._spawn()
    # A child that closes its stdin before reading settings too large for the pipe's buffer.
    big = ProcessSettings(database_url="x", data_dir="d" * 2**20)
    deaf = [sys.executable, "-c", "import os, time; os.close(0); time.sleep(30)"]
    with pytest.raises(BrokenPipeError):
        ControllerProcess(big, deaf)._spawn()
    assert len(os.listdir("/proc/self/fd")) == open_fds
