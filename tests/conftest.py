"""Fixtures.

``database_url``  a fresh, empty database, once on SQLite and once on PostgreSQL (the latter
                  when ``ALLOTMENT_TEST_POSTGRES`` names a server; ``scripts/test`` starts one).
``service``       an Allotment app on ``database_url`` with ``examples/department.yaml``
                  applied, reached in-process (``service.admin()``, ``service.client(token)``).
``hub``           a real JupyterHub process (session-wide) that issues user tokens with chosen
                  scopes: ``hub.token("alice", ["custom:allotment:read"])``.
``hub_service``   ``service``, verifying tokens against ``hub``.
``shared``        a world-writable scratch directory (mode 1777) that workloads running as
                  other POSIX accounts can write to and the test can read; under /var/tmp,
                  since every workload has a /tmp of its own.
``slurm_cluster`` a real Slurm cluster (session-wide): nodes n1..n3, accounting on
                  (``tests/support/slurm.py``).

``scripts/test`` runs the suite in two processes (pytest-xdist, ``--dist loadgroup``). Each
test file is one unit of work, so a module's fixtures start once; every test of the Slurm
cluster is one unit, and so is every test of the browser tests' ``allot up``, so that each
starts once per run, not once per process. The units that take longest go first.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.version import Version
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from tests.support.hub import Hub
from tests.support.service import Service, running_service
from tests.support.slurm import SlurmCluster, SlurmUnavailable, start_cluster, stop_cluster
from tests.support.slurm import usable as slurm_usable

POSTGRES = os.environ.get("ALLOTMENT_TEST_POSTGRES")
HUB_USERS = [
    "alice", "bob", "carol", "dave", "dean", "erin", "frank", "mallory", "hubadmin",
    "scraper",  # holds custom:allotment:metrics (tests/support/hub.py)
    # Each runs jobs for one test only, which checks that none of the account's processes is
    # left: no other test (in another pytest-xdist process) runs anything as them.
    "outlives", "reasons",
]  # fmt: skip


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param(
            "postgresql",
            marks=[
                pytest.mark.postgres,
                pytest.mark.skipif(
                    not POSTGRES, reason="set ALLOTMENT_TEST_POSTGRES (scripts/test does)"
                ),
            ],
        ),
    ]
)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'db' / 'allotment.sqlite'}"
        return
    assert POSTGRES
    name = "t_" + uuid.uuid4().hex[:16]
    admin = create_async_engine(POSTGRES, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(POSTGRES).set(database=name).render_as_string(hide_password=False)
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


@pytest.fixture
async def service(database_url: str, tmp_path: Path) -> AsyncIterator[Service]:
    async with running_service(database_url, tmp_path / "data") as svc:
        yield svc


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    h = Hub(tmp_path_factory.mktemp("hub"), HUB_USERS, admins=["hubadmin"])
    h.start()
    try:
        yield h
    finally:
        h.stop()


@pytest.fixture
async def hub_service(database_url: str, tmp_path: Path, hub: Hub) -> AsyncIterator[Service]:
    async with running_service(database_url, tmp_path / "data", hub_api_url=hub.api_url) as svc:
        yield svc


@pytest.fixture
def shared() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="allot-test-", dir="/var/tmp"))
    d.chmod(0o1777)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


# --- Slurm (issue 15): a real 3-node cluster with accounting, started once per session. ---
@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A real Slurm cluster (``tests/support/slurm.py``): nodes n1..n3, partition ``main``,
    accounting on. Skipped where Slurm cannot run (not root, no apt-get); in CI (``CI=true``)
    a cluster that does not start fails the tests instead."""
    why = slurm_usable()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Slurm is required in CI: {why}")
        pytest.skip(why)
    try:
        cluster = start_cluster(nodes=3)
    except SlurmUnavailable as e:
        if os.environ.get("CI") == "true":
            pytest.fail(str(e))
        pytest.skip(str(e))
    try:
        yield cluster
    finally:
        stop_cluster(cluster)


#: Fixtures started once per process that take long to start or run many slow tests: every test
#: using one is sent to the same process (an ``xdist_group`` of the fixture's name). Every test
#: of Slurm goes with the session's cluster, so that no two clusters start or stop at once.
ONE_PROCESS = ("slurm_cluster", "hub_up")
#: Where the slow tests are (real processes, real daemons): sent first, so that no process
#: is left alone at the end with a long file while the other idles.
SLOW_FIRST = ("e2e/", "integration/", "backends/", "security/")


def _uses_slurm(item: pytest.Item) -> bool:
    """Whether the test starts or reaches a Slurm cluster: by its fixtures, by the contract
    suite's ``slurm`` backend, or by being a Slurm file (which may ask for the cluster at run
    time, ``request.getfixturevalue``, or start one of its own)."""
    if item.path.parent.name in ("unit", "controller"):
        return False  # the fast tier reaches no real service (its ``slurm`` fixtures are fakes)
    names = getattr(item, "fixturenames", ())
    callspec = getattr(item, "callspec", None)
    return (
        "slurm_cluster" in names
        or "slurm" in names
        or (callspec is not None and callspec.params.get("backend") == "slurm")
        or "slurm" in item.path.name
    )


def _group(item: pytest.Item) -> str:
    """The item's unit of work: a fixture of ``ONE_PROCESS``, else its file (``api/test_x``)."""
    if _uses_slurm(item):
        return "slurm_cluster"
    if "hub_up" in getattr(item, "fixturenames", ()):
        return "hub_up"
    return item.path.relative_to(Path(__file__).parent).with_suffix("").as_posix()


def _order(group: str) -> int:
    """Where a unit of work goes in the queue: ``ONE_PROCESS``'s first, then ``SLOW_FIRST``'s."""
    if group in ONE_PROCESS:
        return ONE_PROCESS.index(group)
    for i, place in enumerate(SLOW_FIRST):
        if group.startswith(place):
            return len(ONE_PROCESS) + i
    return len(ONE_PROCESS) + len(SLOW_FIRST)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``-n``), the units of work described above and their order; the
    order within a unit is kept. Without it, nothing changes."""
    # In a worker pytest-xdist sets ``dist`` to "no" and keeps ``loadgroup``.
    if config.getoption("dist", "no") == "no" and not getattr(config.option, "loadgroup", False):
        return
    order = {}
    for item in items:
        group = _group(item)
        item.add_marker(pytest.mark.xdist_group(group))
        order[item.nodeid] = _order(group)
    items.sort(key=lambda item: order[item.nodeid])  # stable: each file's own order is kept


def pytest_configure(config: pytest.Config) -> None:
    """pytest 9.2 with pytest-xdist up to 3.8 silently stops grouping (pytest-dev/pytest-xdist
    #1386): the Slurm cluster and ``allot up`` would start in both processes. Say so instead."""
    if config.getoption("dist", "no") != "loadgroup":
        return
    pytest_version = Version(pytest.__version__)
    if pytest_version >= Version("9.2.dev0") and Version(version("pytest-xdist")) <= Version("3.8"):
        raise pytest.UsageError(
            f"pytest {pytest_version} and pytest-xdist {version('pytest-xdist')} do not group "
            "tests (pytest-dev/pytest-xdist#1386): install the versions pyproject.toml allows "
            "(scripts/install test), or run without -n"
        )
