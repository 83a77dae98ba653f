"""The fast tier: the controller's loops against an in-memory ``FakeBackend``, on SQLite in a
temporary directory. No root, no processes, no services: a workload is admitted and started
in about 20 ms, a test takes a tenth of a second or so (most of it a fresh app's first request).

``fast``      a service prepared as ``allot serve`` prepares one (migrated, ``POLICY`` applied,
              an admin token), its API in-process, and a controller whose ``local`` backend is
              a ``FakeBackend``: ``fast.submit()``, ``fast.cancel()``, ``fast.until()``,
              ``fast.crash_at()``, ``fast.abandon()`` and ``fast.restart()``.
``backend``   the fake the controller drives; a test that wants a misbehaving one overrides
              this fixture (``FailsToStart``, ``NeverStops``, ``Vanishes``, ``SlowPoll``).
``policy``    the policy in force (``POLICY``); a test module may override it.

The controller's own tasks run (scheduling loop, reconciler workers), nudged by the API as in
the service; the poll of running workloads is driven by calling ``poll_once`` (its timer is
set to an hour), so culling and runtime stops happen exactly when a test says.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import update

from allotment.api.app import Settings, create_app, prepare
from allotment.backends.fake import FakeBackend
from allotment.clock import FakeClock
from allotment.config import parse_policy
from allotment.controller import failpoints, lock
from allotment.controller.service import Controller, ControllerSettings
from allotment.db.engine import Database
from allotment.db.tables import Workload

BASE = "http://allotment.test/services/allotment/api/"
HERE = Path(__file__).parent

#: One lab, one node of four CPUs, one-CPU jobs: four run at once, the fifth waits.
POLICY = """
accounts:
  lab:
    shares: 1
    members: [alice]
pools:
  workstation:
    backend: local
    nodes:
      - {name: ws1, cpus: 4, memory: 16G}
profiles:
  small:
    pool: workstation
    size: {cpus: 1, memory: 1G}
sessions: {cull_idle: 1h, cull_warning: 10m}
scheduling: {stop_grace: 1s}
"""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A fast test that takes seconds is stuck: fail it soon, not after the suite's limit."""
    for item in items:
        if item.path.parent == HERE and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(30))


@pytest.fixture(autouse=True)
def claims(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Installations claim their names here, not on the machine (``/run/allotment``)."""
    where = tmp_path_factory.mktemp("claims")
    monkeypatch.setattr(lock, "CLAIMS", where)
    return where


class Crash(BaseException):
    """The controller dies here: a ``BaseException``, so no loop's ``except Exception`` can
    swallow it, as none could a power cut."""


@dataclass
class Fast:
    url: str
    data_dir: Path
    clock: FakeClock
    app: FastAPI
    token: str
    backend: FakeBackend
    controller: Controller
    #: Every controller this test started, the abandoned ones included.
    controllers: list[Controller] = field(default_factory=list)
    #: The ``backend:`` name the fake stands for.
    kind: str = "local"

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),
            base_url=BASE,
            headers={"Authorization": f"token {self.token}"},
        )

    async def submit(self, *command: str, **body: Any) -> int:
        """A job for ``lab`` on ``small`` (its command runs on the fake: ``fake.py``)."""
        payload = {"profile": "small", "account": "lab", "command": list(command or ["work"])}
        async with self.client() as c:
            r = await c.post("workloads", json={**payload, **body})
        assert r.status_code == 201, r.text
        return int(r.json()["id"])

    async def session(self) -> int:
        """A session, as the hub's spawner starts one (a job made a session: the spawner's
        token needs a real hub)."""
        wid = await self.submit("jupyterhub-singleuser")
        async with self.controller.db.write() as s:
            await s.execute(update(Workload).where(Workload.id == wid).values(kind="session"))
        return wid

    async def cancel(self, wid: int) -> None:
        async with self.client() as c:
            r = await c.post(f"workloads/{wid}/cancel")
        assert r.status_code == 200, r.text

    async def get(self, wid: int) -> dict[str, Any]:
        async with self.client() as c:
            r = await c.get(f"workloads/{wid}")
        assert r.status_code == 200, r.text
        found: dict[str, Any] = r.json()
        return found

    async def until(self, wid: int, *statuses: str, seconds: float = 10.0) -> dict[str, Any]:
        """The workload, once its status is one of ``statuses`` (the loops get there)."""
        return await self.eventually(wid, lambda w: w["status"] in statuses, seconds)

    async def eventually(
        self, wid: int, check: Callable[[dict[str, Any]], bool], seconds: float = 10.0
    ) -> dict[str, Any]:
        """The workload, once ``check`` holds for it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            w = await self.get(wid)
            if check(w):
                return w
            if loop.time() > deadline:
                raise AssertionError(f"workload {wid} never got there: {w}")
            await asyncio.sleep(0.002)

    async def poll_once(self) -> None:
        """One poll of running workloads: ended ones, idle sessions, maximum runtimes."""
        await self.controller.poll_once()

    def crash_at(self, step: str) -> asyncio.Event:
        """Arm ``step``: the controller dies there (every one of its loops, at once); the
        event is set when it did."""
        crashed = asyncio.Event()
        victim = self.controller

        def die() -> None:
            crashed.set()
            me = asyncio.current_task()
            for t in tasks(victim):
                if t is not me:
                    t.cancel()
            raise Crash(step)

        failpoints.arm(step, die)
        return crashed

    async def abandon(self) -> None:
        """Leave the controller as a killed process leaves it: its tasks gone, its lock free,
        none of its clean-up run (backends are not closed, nothing is released)."""
        failpoints.disarm()
        old = self.controller
        await halt(old)
        release_lock(old)
        self.backend.drop_watches()
        await old.db.dispose()  # the connections a dead process held are closed

    async def restart(self) -> Controller:
        """A new controller on the same database and the same backend (the machine keeps
        its processes), as ``allot serve`` started again."""
        self.controller = await start_controller(
            self.url, self.data_dir, self.clock, self.backend, self.kind
        )
        self.controllers.append(self.controller)
        self.app.state.allotment.controller = self.controller
        return self.controller


def tasks(controller: Controller) -> list[asyncio.Task[None]]:
    """The controller's running loops."""
    return list(controller._tasks)


async def halt(controller: Controller) -> None:
    """Cancel the controller's loops until each has ended. Asked once, a loop may not end:
    Python 3.11's ``asyncio.wait_for`` drops a cancellation that arrives as what it waits
    for completes (fixed in 3.12), and the scheduling loop waits in one."""
    for t in tasks(controller):
        while not t.done():
            t.cancel()
            await asyncio.wait([t], timeout=0.05)
        with contextlib.suppress(asyncio.CancelledError, Crash):
            t.result()


def release_lock(controller: Controller) -> None:
    """What the kernel does for a dead process: close its lock file."""
    lock = controller._lock
    if lock is not None:
        lock.close()
        controller._lock = None


async def start_controller(
    url: str, data_dir: Path, clock: FakeClock, backend: FakeBackend, kind: str = "local"
) -> Controller:
    settings = ControllerSettings(data_dir=data_dir, workers=4, poll_interval=3600.0)
    controller = Controller(Database(url), clock, settings, backends={kind: backend})
    controller.queue.base_delay = 0.001  # retries in milliseconds, not 50 ms doubling
    assert await controller.start()
    return controller


#: Prepared databases by policy text, made once a session each.
_templates: dict[str, tuple[Path, str]] = {}


@pytest.fixture
def policy() -> str:
    """The policy in force; a test module may override it."""
    return POLICY


@pytest.fixture
async def template(policy: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A database prepared once per policy (migrated, policy applied), copied for each test."""
    found = _templates.get(policy)
    if found is not None:
        return found
    root = tmp_path_factory.mktemp("fast-template")
    path = root / "allotment.sqlite"
    db = Database(f"sqlite+aiosqlite:///{path}")
    try:
        settings = Settings(
            database_url=f"sqlite+aiosqlite:///{path}",
            data_dir=root,
            policy=parse_policy(policy, environ={}),
        )
        await prepare(db, settings, FakeClock())
    finally:
        await db.dispose()
    found = _templates[policy] = (path, (root / "admin-token").read_text().strip())
    return found


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def kind() -> str:
    """The ``backend:`` name the fake stands for (the policy's pools name it)."""
    return "local"


@pytest.fixture
async def fast(
    template: tuple[Path, str], backend: FakeBackend, kind: str, tmp_path: Path
) -> AsyncIterator[Fast]:
    path, token = template
    shutil.copy(path, tmp_path / "allotment.sqlite")
    url = f"sqlite+aiosqlite:///{tmp_path / 'allotment.sqlite'}"
    data_dir = tmp_path / "data"
    clock = FakeClock()
    settings = Settings(database_url=url, data_dir=data_dir, prepared=True, admin_token_file=False)
    app = create_app(settings, clock=clock, backends={kind: backend})
    async with app.router.lifespan_context(app):
        controller = await start_controller(url, data_dir, clock, backend, kind)
        app.state.allotment.controller = controller
        f = Fast(url, data_dir, clock, app, token, backend, controller, [controller], kind)
        try:
            yield f
        finally:
            failpoints.disarm()
            app.state.allotment.controller = None
            await halt(f.controller)
            await f.controller.stop()
            await f.controller.db.dispose()
