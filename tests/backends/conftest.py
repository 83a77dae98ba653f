"""Fixtures for backend tests.

``backend``   every backend implementation, for the contract suite: the local one, the
              in-memory fake of the fast tier, so the fake stays honest, and the Slurm one on
              the real multi-node cluster of ``slurm_cluster`` (skipped where none can run).
``slurm``     a Slurm backend of its own on that cluster, for ``test_slurm.py``.
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
from typing import Any

import pytest

from allotment.backends.base import Backend
from allotment.backends.fake import FakeBackend
from allotment.backends.local.backend import LocalBackend
from allotment.backends.local.cgroups import detect
from allotment.backends.local.posix import PosixAccounts
from allotment.backends.slurm.backend import PoolSettings, SlurmBackend
from allotment.backends.slurm.runner import SlurmRunner
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


#: The Slurm account the contract suite charges (``tests/backends/test_contract.spec``).
SLURM_ACCOUNTS = ("lab",)


def slurm_conf(request: pytest.FixtureRequest) -> str:
    """The test cluster's ``slurm.conf``, with the accounts the tests charge; skips where no
    cluster can run."""
    try:
        cluster = request.getfixturevalue("slurm_cluster")
    except pytest.FixtureLookupError:
        pytest.skip("no Slurm test cluster (tests/support/slurm.py) in this checkout")
    for account in SLURM_ACCOUNTS:
        cluster.run("sacctmgr", "-i", "add", "account", account, check=False)
    return str(cluster.conf)


def slurm_backend(conf: str, state: Path, **kw: Any) -> SlurmBackend:
    """A Slurm backend of its own installation on the test cluster, polling often."""
    return SlurmBackend(
        SlurmRunner(conf, None, 30.0),
        PosixAccounts(),
        installation=name_for(state),
        pools={"cluster": PoolSettings("main", None)},
        poll_interval=kw.pop("poll_interval", 0.2),
        **kw,
    )


@pytest.fixture
async def slurm(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SlurmBackend]:
    """A Slurm backend of its own; what a test left in Slurm is reaped."""
    if not ROOT:
        pytest.skip("the Slurm backend submits as each user's POSIX account: needs root")
    b = slurm_backend(slurm_conf(request), tmp_path / "state")
    try:
        yield b
    finally:
        for wid in await b.present():
            await b.reap(wid)
        await b.close()


@pytest.fixture(params=["local", "fake", "slurm"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    b: Backend
    if request.param == "local":
        b = local_backend(tmp_path / "state")
    elif request.param == "fake":
        b = FakeBackend()
    else:
        if not ROOT:
            pytest.skip("the Slurm backend submits as each user's POSIX account: needs root")
        b = slurm_backend(slurm_conf(request), tmp_path / "state")
    try:
        yield b
    finally:
        for wid in await b.present():
            await b.reap(wid)
        await b.close()


@pytest.fixture
def programs(backend: Backend) -> Programs:
    return FakePrograms() if isinstance(backend, FakeBackend) else Programs()
