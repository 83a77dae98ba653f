"""The controller in a process of its own, and the supervisor `allot serve` keeps it with.

A scheduling cycle over a long queue, and the reconciler's starts and ends, are CPU work in
Python: in the API's process they held the event loop, and submissions waited behind them
(119 creations/s on PostgreSQL instead of 931). `allot serve` therefore runs the API in its
process (or processes) and the controller in a child of its own, on another core:

- The parent prepares the database once (migrations, the policy, the admin token), then starts
  the child (``python -m allotment.controller``) and hands it its settings on stdin, never on
  the command line, where every user of the machine could read the database's password.
- The child says on a pipe whether it took the installation's controller lock ("started"),
  waits for another process of the installation that holds it ("standby": it tries again
  every few seconds and takes over when that one ends), or cannot run ("failed: …", for
  example another installation's name). The parent fails at start on the last.
- The child dies with its parent: the kernel sends it SIGTERM when the parent ends, however
  it ends (``PR_SET_PDEATHSIG``), and it stops as on any SIGTERM, leaving workloads running
  to be found again. A child that fails (killed, or ended with an error) is started again
  with a backoff; one that stopped as asked (status 0) is not.
- API processes reach it through the nudge pipe (``nudge.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from allotment.clock import SystemClock
from allotment.controller import failpoints
from allotment.controller.lock import NameInUse
from allotment.controller.service import Controller, ControllerSettings
from allotment.db.engine import Database
from allotment.db.outage import OutageLog, classify

__all__ = [
    "ControllerProcess",
    "ControllerStartFailed",
    "ProcessSettings",
    "main",
    "run_controller",
]

log = logging.getLogger("allotment.controller")

#: Seconds between attempts to take the lock while another process holds it.
STANDBY_SECONDS = 2.0

#: The child's command line.
COMMAND = (sys.executable, "-m", "allotment.controller")

#: Environment variable naming the pipe on which the child reports how it started.
STATUS_FD = "ALLOTMENT_CONTROLLER_STATUS_FD"

_PR_SET_PDEATHSIG = 1


class ControllerStartFailed(Exception):
    """The controller's process could not start; the message says why."""


@dataclass(frozen=True)
class ProcessSettings:
    """What the child needs: passed as JSON on its stdin."""

    database_url: str
    data_dir: str
    installation: str | None = None
    log_level: str = "info"

    def dumps(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def loads(cls, text: str) -> ProcessSettings:
        return cls(**json.loads(text))


# -- the child ---------------------------------------------------------------------------


def _die_with_parent(parent: int) -> None:
    """SIGTERM when the parent ends (Linux); a parent already gone is the same."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        raise SystemExit(0)


def _report(status: IO[str] | None, line: str) -> None:
    if status is not None:
        with contextlib.suppress(OSError):
            status.write(line + "\n")
            status.flush()


async def _until(stop: asyncio.Event, seconds: float) -> None:
    """Wait ``seconds``, or less if ``stop`` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()


async def run_controller(
    settings: ProcessSettings, status: IO[str] | None, stop: asyncio.Event
) -> int:
    """Run the controller until ``stop`` is set; its exit status. While another process of
    the installation holds the lock, wait and try again (a standby)."""
    db = Database(settings.database_url)

    def new() -> Controller:
        return Controller(
            db,
            SystemClock(),
            ControllerSettings(Path(settings.data_dir), installation=settings.installation),
        )

    controller = new()
    #: The database unavailable as the controller starts (a restart or a takeover during an
    #: outage): its start is tried again within seconds, logged once, never a traceback.
    outage = OutageLog("controller's start", "attempts failed", log)
    try:
        standby = False
        while not stop.is_set():
            try:
                started = await controller.start()
            except NameInUse as e:
                _report(status, f"failed: {e}")
                log.error("%s", e)
                return 3
            except Exception as e:
                if (found := classify(e)) is None:
                    raise
                outage.failed(found)
                # Its lock goes with it; a fresh one recovers from the start when it answers.
                await controller.stop()
                controller = new()
                await _until(stop, outage.backoff())
                continue
            outage.recovered()
            if started:
                _report(status, "started")
                if standby:
                    log.info("took over as the controller")
                break
            if not standby:
                _report(status, "standby")
                standby = True
            await _until(stop, STANDBY_SECONDS)
        await stop.wait()
        return 0
    finally:
        await controller.stop()
        await db.dispose()


async def _run(settings: ProcessSettings, status: IO[str] | None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        return await run_controller(settings, status, stop)
    finally:
        # Another signal while this process exits must not find a closed loop's pipe.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def main() -> None:
    """``python -m allotment.controller``: settings on stdin (``ProcessSettings``)."""
    parent = int(os.environ.get("ALLOTMENT_CONTROLLER_PARENT", os.getppid()))
    _die_with_parent(parent)
    settings = ProcessSettings.loads(sys.stdin.read())
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    # aiosqlite logs every statement's parameters at DEBUG: workloads' environments, Dask
    # clusters' keys. Secrets are never logged, whatever the level.
    logging.getLogger("aiosqlite").setLevel(logging.INFO)
    # A failpoint is a power cut: the whole service goes, not just this process.
    failpoints.on_kill = lambda: os.kill(parent, signal.SIGKILL)
    fd = os.environ.get(STATUS_FD)
    status = os.fdopen(int(fd), "w") if fd else None
    try:
        code = asyncio.run(_run(settings, status))
    finally:
        if status is not None:
            with contextlib.suppress(OSError):
                status.close()
    raise SystemExit(code)


# -- the parent --------------------------------------------------------------------------


class ControllerProcess:
    """Starts the child, waits until it says how it started, starts it again if it ends on
    its own, and stops it when the service stops."""

    def __init__(
        self, settings: ProcessSettings, command: Sequence[str] = COMMAND, backoff: float = 1.0
    ) -> None:
        self.settings = settings
        #: The child's command line (tests give a stand-in of a few lines).
        self.command = list(command)
        #: Seconds before the first restart of a failed child; doubled each time, to 30 s.
        self.backoff = backoff
        self.proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        #: Held while a child is started or the service stops: none is started after.
        self._spawning = threading.Lock()
        self._watcher: threading.Thread | None = None

    def _spawn(self) -> tuple[subprocess.Popen[bytes], int]:
        read, write = os.pipe()
        env = {
            **os.environ,
            STATUS_FD: str(write),
            "ALLOTMENT_CONTROLLER_PARENT": str(os.getpid()),
        }
        try:
            proc = subprocess.Popen(
                self.command,
                stdin=subprocess.PIPE,
                env=env,
                pass_fds=(write,),
            )
        except BaseException:
            os.close(read)
            raise
        finally:
            os.close(write)
        try:
            assert proc.stdin is not None
            proc.stdin.write(self.settings.dumps().encode())
            proc.stdin.close()
        except BaseException:  # it died before it read its settings: none of it stays
            os.close(read)
            proc.kill()
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            proc.wait()
            raise
        return proc, read

    def start(self) -> str:
        """Start the child; "started" or "standby" (ControllerStartFailed when it cannot)."""
        proc, read = self._spawn()
        self.proc = proc
        with os.fdopen(read) as status:
            line = _first_line(status, proc)
        if line is None or line.startswith("failed"):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            why = line[len("failed: ") :] if line else "it ended before it started"
            raise ControllerStartFailed(f"the controller could not start: {why}")
        self._watcher = threading.Thread(target=self._watch, name="controller-watch", daemon=True)
        self._watcher.start()
        return line

    def _watch(self) -> None:
        backoff = self.backoff
        while not self._stopping.is_set():
            assert self.proc is not None
            started = time.monotonic()
            code = self.proc.wait()
            if self._stopping.is_set():
                return
            if code == 0:
                # Stopped as asked (SIGTERM or SIGINT sent to it, as systemd and a terminal's
                # Ctrl-C send to every process of the service): not a failure to repair.
                log.info("the controller process stopped")
                return
            if time.monotonic() - started > 60:
                backoff = self.backoff
            log.error(
                "the controller process ended (status %s); starting it again in %.0f s",
                code,
                backoff,
            )
            while True:
                if self._stopping.wait(backoff):
                    return
                backoff = min(backoff * 2, 30.0)
                with self._spawning:
                    if self._stopping.is_set():
                        return
                    try:
                        proc, read = self._spawn()
                    except Exception as e:  # EMFILE, EAGAIN, its stdin closed: try again
                        log.error(
                            "the controller process could not be started again (%s); trying "
                            "again in %.0f s",
                            e,
                            backoff,
                        )
                        continue
                    os.close(read)
                    self.proc = proc
                    break

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM, then SIGKILL after ``grace``; running workloads keep running."""
        with self._spawning:
            self._stopping.set()
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            log.warning("the controller process did not stop in %.0f s; killing it", grace)
            proc.kill()
            proc.wait()


def _first_line(status: IO[str], proc: subprocess.Popen[bytes]) -> str | None:
    """The child's first report, or None when it ended without one. Recovery comes before
    the report, and may take a while with a long queue: no time limit while it lives."""
    while True:
        ready, _, _ = select.select([status], [], [], 1.0)
        if ready:
            return status.readline().strip() or None
        if proc.poll() is not None:
            return None
