"""Fixtures for backend tests.

``backend``   every backend implementation, for the contract suite: the local one, and the
              in-memory fake of the fast tier, so the fake stays honest (the Slurm one joins
              when it exists).
``programs``  the commands a contract test runs, as ``backend`` runs them: real shell
              commands on the real backends, the fake's own words on the fake.
``new_id``    a workload id no other test uses (cgroups are machine-wide).
"""

from __future__ import annotations

import itertools
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from allotment.backends.base import Backend
from allotment.backends.fake import FakeBackend
from allotment.backends.local.backend import LocalBackend
from allotment.backends.local.cgroups import detect
from allotment.backends.local.posix import PosixAccounts
from allotment.domain.resources import Resources
from allotment.installation import name_for

ROOT = os.geteuid() == 0
_ids = itertools.count(os.getpid() * 1000)


@pytest.fixture
def new_id() -> Callable[[], int]:
    return lambda: next(_ids)


def local_backend(state: Path) -> LocalBackend:
    return LocalBackend(
        state,
        "localhost",
        Resources.of(2, 4 * 2**30, {"a100": 2}),  # GPUs declared, none present: a named fake
        detect(),
        PosixAccounts(),
        installation=name_for(state),
    )


class Programs:
    """Commands with a known effect, for a real backend: each runs in a shell."""

    def touch(self, path: Path) -> list[str]:
        return ["touch", str(path)]

    def succeed(self) -> list[str]:
        return ["true"]

    def exit(self, status: int) -> list[str]:
        return ["sh", "-c", f"exit {status}"]

    def kill_itself(self) -> list[str]:
        return ["sh", "-c", "kill -9 $$"]

    def sleep(self, seconds: float) -> list[str]:
        return ["sleep", str(seconds)]

    def stubborn(self) -> list[str]:
        """Ignores SIGTERM, and leaves a child behind in a new session."""
        return ["sh", "-c", "trap '' TERM; setsid sleep 300 & sleep 300; wait"]

    def append(self, path: Path, word: str) -> list[str]:
        return ["sh", "-c", f"echo {word} >> {path}"]

    def say(self, word: str) -> list[str]:
        """Writes the word and a newline to its standard output."""
        return ["echo", word]


class FakePrograms(Programs):
    """The same effects in the words the fake understands (``backends/fake.py``)."""

    def exit(self, status: int) -> list[str]:
        return ["exit", str(status)]

    def kill_itself(self) -> list[str]:
        return ["kill", str(signal.SIGKILL.value)]

    def stubborn(self) -> list[str]:
        return ["stubborn"]

    def append(self, path: Path, word: str) -> list[str]:
        return ["append", str(path), word]


@pytest.fixture
async def local(tmp_path: Path) -> AsyncIterator[LocalBackend]:
    """A local backend of its own; what a test that failed half-way left is reaped."""
    b = local_backend(tmp_path / "state")
    yield b
    for wid in await b.present():
        await b.reap(wid)
    await b.close()


@pytest.fixture(params=["local", "fake"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    b: Backend = local_backend(tmp_path / "state") if request.param == "local" else FakeBackend()
    try:
        yield b
    finally:
        for wid in await b.present():
            await b.reap(wid)
        await b.close()


@pytest.fixture
def programs(backend: Backend) -> Programs:
    return FakePrograms() if isinstance(backend, FakeBackend) else Programs()
