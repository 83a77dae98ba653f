"""Health that means healthy, and costs little: readiness sees a controller that has started
but still recovers and a reconciler that is behind; the database checks are shared between
the probes of one second (they commit a write, and need no token); two processes' first
heartbeats never fail each other; the outage's probe ends with the service. Real databases."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event, update

from allotment.api.routes.health import BEHIND_SECONDS, FRESH_SECONDS
from allotment.db.engine import Database
from allotment.db.heartbeat import CONTROLLER, beat, last_beat, started
from allotment.db.tables import WORKLOADS
from allotment.domain.workloads import WorkloadState
from tests.api.test_outage import Postgres, postgres  # noqa: F401  (a fixture)
from tests.support.service import Service, running_service

JOB = {"profile": "small", "command": ["true"], "account": "lab-a"}


def checks(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in body["checks"]}


@contextmanager
def heartbeat_writes() -> Iterator[list[str]]:
    """Every statement any engine sends that writes a heartbeat."""
    seen: list[str] = []

    def count(*args: Any) -> None:
        statement = str(args[2])
        if "heartbeats" in statement and statement.lstrip().upper().startswith("INSERT"):
            seen.append(statement)

    event.listen(Engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", count)


async def test_probes_within_a_second_share_one_database_write(service: Service) -> None:
    async with service.client() as c:
        await asyncio.sleep(FRESH_SECONDS)
        with heartbeat_writes() as writes:
            answers = await asyncio.gather(*(c.get("health") for _ in range(20)))
            answers += [await c.get("health/ready") for _ in range(5)]
        assert {r.status_code for r in answers[:20]} == {200}
        assert len(writes) == 1, writes
        await asyncio.sleep(FRESH_SECONDS)
        with heartbeat_writes() as writes:
            assert (await c.get("health")).status_code == 200
        assert len(writes) == 1  # a second on, the database is asked again


async def test_a_controller_that_started_and_still_recovers_is_not_ready(
    service: Service,
) -> None:
    db = service.app.state.allotment.db
    async with service.client() as c:
        await beat(db, CONTROLLER, service.clock.now(), 60.0)  # its predecessor's last beat
        assert (await c.get("health/ready")).status_code == 200
        await started(db, CONTROLLER, service.clock.now())
        r = await c.get("health/ready")
        assert r.status_code == 503
        assert "still recovering" in checks(r.json())["controller"]["reason"]
        service.clock.advance(61)
        r = await c.get("health/ready")
        assert r.status_code == 503
        assert "has completed no scheduling cycle since" in checks(r.json())["controller"]["reason"]
        await beat(db, CONTROLLER, service.clock.now(), 60.0)  # its first cycle
        assert (await c.get("health/ready")).status_code == 200


async def test_readiness_reports_the_reconcilers_backlog(service: Service) -> None:
    db = service.app.state.allotment.db
    async with service.admin() as c:
        await beat(db, CONTROLLER, service.clock.now(), 60.0)
        r = await c.get("health/ready")
        assert r.status_code == 200
        assert checks(r.json())["controller-backlog"]["reason"] == "no workload waits to start"
        wid = (await c.post("workloads", json=JOB)).json()["id"]
        admitted_at = service.clock.now() - timedelta(seconds=30)
        await db.run_write(
            lambda s: s.execute(
                update(WORKLOADS)
                .where(WORKLOADS.c.id == wid)
                .values(status=int(WorkloadState.ADMITTED), updated_at=admitted_at)
            )
        )
        r = await c.get("health/ready")
        assert r.status_code == 200, r.json()
        said = checks(r.json())["controller-backlog"]["reason"]
        assert said == "1 admitted, waiting to start; the oldest for 30 s"
        service.clock.advance(BEHIND_SECONDS)
        await beat(db, CONTROLLER, service.clock.now(), 60.0)  # cycles on time, starts do not
        r = await c.get("health/ready")
        assert r.status_code == 503
        backlog = checks(r.json())["controller-backlog"]
        assert not backlog["ok"] and "the controller is behind" in backlog["reason"]
        assert checks(r.json())["controller"]["ok"]
        assert (await c.get("health")).status_code == 200  # the API still serves


async def test_first_beats_of_two_processes_never_fail_each_other(service: Service) -> None:
    url = service.app.state.allotment.db.url
    one, two = Database(url), Database(url)
    try:
        for i in range(30):
            at = service.clock.now() + timedelta(seconds=i)
            await asyncio.gather(beat(one, f"race-{i}", at, 1.0), beat(two, f"race-{i}", at, 2.0))
            seen = await last_beat(one, f"race-{i}")
            assert seen is not None and seen[0] == at
    finally:
        await one.dispose()
        await two.dispose()


async def test_the_outage_probe_ends_with_the_service(
    postgres: Postgres,  # noqa: F811
    tmp_path: Path,
) -> None:
    async with running_service(postgres.url, tmp_path / "data") as svc, svc.admin() as c:
        postgres.stop()
        try:
            assert (await c.get("workloads")).status_code == 503
            assert _probes(), "an outage starts a probe of the database"
        finally:
            postgres.start()
    assert not _probes()


def _probes() -> list[asyncio.Task[Any]]:
    return [
        t
        for t in asyncio.all_tasks()
        if not t.done() and getattr(t.get_coro(), "__qualname__", "") == "Unexpected._probe"
    ]
