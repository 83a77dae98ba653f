"""While the database is unavailable the API answers 503 with Retry-After and says what is
wrong, logs the outage once, answers health honestly, and serves again without a restart
once the database is back. Real PostgreSQL servers stopped and started, a real full disk."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from allotment.api.app import Settings, create_app
from allotment.backends.fake import FakeBackend
from allotment.config import load_policy
from allotment.db.engine import Database
from allotment.db.heartbeat import CONTROLLER, beat, last_beat
from tests.support.loopfs import fill, free, small_filesystem
from tests.support.postgres import Postgres, private_postgres
from tests.support.service import BASE, Service, running_service

REPO = Path(__file__).resolve().parents[2]
JOB = {"profile": "small", "command": ["true"], "account": "lab-a"}


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    with private_postgres("allotment-outage-pg.") as server:
        yield server


def assert_unavailable(r: httpx.Response, says: str) -> None:
    assert r.status_code == 503, (r.status_code, r.text)
    assert int(r.headers["Retry-After"]) > 0
    assert r.headers["content-type"].startswith("application/problem+json")
    assert says in r.json()["detail"], r.json()


async def until(what: str, check: object, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


async def test_an_unexpected_error_answers_500_and_is_not_raised_to_the_server(
    service: Service,
) -> None:
    """Raised on to the server, the error would make uvicorn close the keep-alive connection
    (``ASGITransport`` raises what the app raises)."""

    async def broken() -> None:
        raise RuntimeError("a bug")

    service.app.add_api_route("/services/allotment/api/broken", broken)
    async with service.client() as c:
        r = await c.get("broken")
    assert r.status_code == 500
    assert "unexpected error" in r.json()["detail"]


async def test_a_stopped_postgres_answers_503_then_serves_again(
    postgres: Postgres, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_service(postgres.url, tmp_path / "data") as svc, svc.admin() as c:
        assert (await c.post("workloads", json=JOB)).status_code == 201
        postgres.stop()
        with caplog.at_level(logging.INFO, "allotment"):
            for _ in range(5):
                assert_unavailable(await c.get("workloads"), "The database is unavailable")
            assert_unavailable(await c.post("workloads", json=JOB), "database is unavailable")
            health = await c.get("health")
            assert health.status_code == 503
            checks = {k["name"]: k for k in health.json()["checks"]}
            assert not checks["database-read"]["ok"]
            assert "unavailable" in checks["database-read"]["reason"]
            assert (await c.get("health/live")).status_code == 200
            postgres.start()

            async def back() -> bool:
                return (await c.post("workloads", json=JOB)).status_code == 201

            await until("a submission to be accepted again", back)

            async def logged_back() -> bool:
                return any("the database is back" in r.getMessage() for r in caplog.records)

            await until("the end of the outage to be logged", logged_back, 10)
        assert (await c.get("health")).status_code == 200
    said = [r.getMessage() for r in caplog.records if r.name.startswith("allotment.api")]
    started = [m for m in said if "API: the database is unavailable" in m]
    assert len(started) == 1, said
    assert not any(r.exc_info for r in caplog.records if r.name.startswith("allotment.api"))


async def test_a_full_sqlite_disk_answers_503_then_serves_again(tmp_path: Path) -> None:
    with small_filesystem(32) as fs:
        url = f"sqlite+aiosqlite:///{fs / 'db' / 'allotment.sqlite'}"
        async with running_service(url, fs / "data") as svc, svc.admin() as c:
            fill(fs)
            answers = []
            for _ in range(200):
                r = await c.post("workloads", json={**JOB, "array": "0-199"})
                answers.append(r.status_code)
                if r.status_code == 503:
                    assert_unavailable(r, "The disk holding the database is full")
                    break
            assert set(answers) <= {201, 503}, answers
            assert answers[-1] == 503, answers
            free(fs)

            async def back() -> bool:
                return (await c.post("workloads", json=JOB)).status_code == 201

            await until("a submission to be accepted again", back)


async def test_readiness_needs_a_controller_that_keeps_up(service: Service) -> None:
    """This service runs no controller, so readiness reads the heartbeat another process
    leaves; plain health needs only the database."""
    async with service.client() as c:
        assert (await c.get("health")).status_code == 200
        r = await c.get("health/ready")
        assert r.status_code == 503
        controller = {k["name"]: k for k in r.json()["checks"]}["controller"]
        assert not controller["ok"] and "no controller has reported" in controller["reason"]

        db = Database(service.app.state.allotment.db.url)
        try:
            await beat(db, CONTROLLER, service.clock.now(), 60.0)
            r = await c.get("health/ready")
            assert r.status_code == 200, r.json()
            service.clock.advance(61)
            r = await c.get("health/ready")
            assert r.status_code == 503
            controller = {k["name"]: k for k in r.json()["checks"]}["controller"]
            assert "stuck or gone" in controller["reason"]
        finally:
            await db.dispose()


async def test_the_controller_waits_out_a_stopped_postgres_and_carries_on(
    postgres: Postgres, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its loops log the outage once each, with no traceback, and admit and start work again
    without a restart once the database is back."""
    app = create_app(
        Settings(
            database_url=postgres.url,
            data_dir=tmp_path / "data",
            hub_api_url="http://127.0.0.1:9/hub/api",
            policy=load_policy(REPO / "examples/department.yaml", environ={}),
            controller=True,
        ),
        backends={"local": FakeBackend()},
    )
    async with app.router.lifespan_context(app):
        token = (tmp_path / "data" / "admin-token").read_text().strip()
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url=BASE,
            headers={"Authorization": f"token {token}"},
        ) as c:

            async def ran(wid: int) -> bool:
                r = await c.get(f"workloads/{wid}")
                return r.status_code == 200 and r.json()["started_at"] is not None

            first = (await c.post("workloads", json=JOB)).json()["id"]
            await until("the first job to start", lambda: ran(first), 10)
            ready = await c.get("health/ready")
            assert ready.status_code == 200, ready.json()
            controller = {k["name"]: k for k in ready.json()["checks"]}["controller"]
            assert "in this process" in controller["reason"]

            async def beating() -> bool:  # for API processes without the controller
                return await last_beat(app.state.allotment.db, CONTROLLER) is not None

            await until("the controller's heartbeat in the database", beating, 10)
            with caplog.at_level(logging.INFO, "allotment"):
                postgres.stop()
                for _ in range(3):
                    app.state.allotment.controller.nudge()
                    await asyncio.sleep(1)
                postgres.start()

                async def accepted() -> bool:
                    return (await c.post("workloads", json=JOB)).status_code == 201

                await until("a submission to be accepted again", accepted)
                second = (await c.get("workloads?limit=1")).json()["items"][0]["id"]
                await until("a job submitted after the outage to start", lambda: ran(second))

                async def logged_back() -> bool:
                    return any(
                        "scheduling loop: the database is back" in r.getMessage()
                        for r in caplog.records
                    )

                await until("the scheduling loop to log the end of the outage", logged_back, 15)
    said = [r for r in caplog.records if r.name == "allotment.controller"]
    started = [r for r in said if "scheduling loop: the database is unavailable" in r.getMessage()]
    assert len(started) == 1, [r.getMessage() for r in said]
    assert not [r.getMessage() for r in said if r.exc_info], "a traceback was logged"
