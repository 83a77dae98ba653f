"""Fixtures for backend tests.

``backend``   every backend implementation, for the contract suite (the local one here; the
              Slurm one joins when it exists).
``new_id``    a workload id no other test uses (cgroups are machine-wide).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from allotment.backends.base import Backend
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


@pytest.fixture(params=["local"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    b: Backend = local_backend(tmp_path / "state")
    try:
        yield b
    finally:
        for wid in await b.present():
            await b.reap(wid)
        await b.close()
