"""Dask clusters over HTTP on both databases: create (with every refusal), list, get, scale,
adapt, stop, the client's heartbeat, and the scheduler's report (its token, STARTING →
RUNNING, idle time, adaptive targets clamped, versions that differ).

The caller is the headless administrator (a user of its own here); who else may see what is
tests/security/test_dask_api.py's, against a real JupyterHub. No controller runs: what it
would do to a cluster's workloads (start them, end them) is written to the database directly.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import insert, select, update

from allotment.db.engine import Database
from allotment.db.tables import DaskCluster, Workload
from allotment.domain.dask import ClusterState
from allotment.domain.workloads import WorkloadState
from tests.support.service import ROOT, Service, running_service

DEPARTMENT = (ROOT / "examples/department.yaml").read_text()
VERSIONS = {"python": "3.11.7", "dask": "2026.8.0", "distributed": "2026.8.0"}
GIB = 1024**3


def cluster(**body: Any) -> dict[str, Any]:
    """A create request: workers from profile `small`, charged to lab-a."""
    return {
        "name": "era5",
        "account": "lab-a",
        "profile": "small",
        "python": sys.executable,
        "versions": VERSIONS,
        **body,
    }


def database(service: Service) -> Database:
    db: Database = service.app.state.allotment.db
    return db


async def create(c: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    r = await c.post("dask/clusters", json=cluster(**body))
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


async def token_of(service: Service, cluster_id: int) -> str:
    """The token the service gave the cluster's scheduler (in its environment)."""
    async with database(service).read() as s:
        env = (
            await s.execute(
                select(Workload.env).where(
                    Workload.cluster_id == cluster_id, Workload.kind == "dask-scheduler"
                )
            )
        ).scalar_one()
    assert env is not None
    token: str = env["ALLOT_DASK_TOKEN"]
    return token


async def report(service: Service, token: str, **body: Any) -> httpx.Response:
    """A scheduler's report, with its cluster's token."""
    async with service.client(token) as c:
        return await c.post(
            "dask/report",
            json={
                "address": "tls://127.0.0.1:40001",
                "dashboard": "https://127.0.0.1:40002",
                "versions": VERSIONS,
                **body,
            },
        )


async def set_cluster(service: Service, cluster_id: int, **values: Any) -> None:
    async with database(service).write() as s:
        await s.execute(update(DaskCluster).where(DaskCluster.id == cluster_id).values(**values))


async def set_workload(service: Service, workload_id: int, **values: Any) -> None:
    async with database(service).write() as s:
        await s.execute(update(Workload).where(Workload.id == workload_id).values(**values))


async def add_worker(service: Service, cluster_id: int, **values: Any) -> int:
    """A worker workload as the controller makes one (2 CPUs, 8G on the workstation)."""
    async with database(service).write() as s:
        scheduler = (
            await s.execute(
                select(Workload).where(
                    Workload.cluster_id == cluster_id, Workload.kind == "dask-scheduler"
                )
            )
        ).scalar_one()
        now = service.clock.now()
        row = {
            "kind": "dask-worker",
            "name": "era5-worker",
            "user_id": scheduler.user_id,
            "account_id": scheduler.account_id,
            "pool_id": scheduler.pool_id,
            "profile_id": scheduler.profile_id,
            "millicpus": 2000,
            "memory": 8 * GIB,
            "gpus": {},
            "command": ["python"],
            "target": int(WorkloadState.RUNNING),
            "status": int(WorkloadState.PENDING),
            "reason": "waiting for the scheduler",
            "created_at": now,
            "updated_at": now,
            "cluster_id": cluster_id,
            **values,
        }
        return int(
            (await s.execute(insert(Workload).values(**row).returning(Workload.id))).scalar_one()
        )


@pytest.fixture
async def dask_service(database_url: str, tmp_path: Path) -> AsyncIterator[Service]:
    """The department with a `dask:` section: few workers and clusters, for the limits."""
    text = DEPARTMENT + "\ndask:\n  max_workers: 8\n  clusters_per_user: 2\n"
    async with running_service(database_url, tmp_path / "data", policy_text=text) as svc:
        yield svc


# --- create ---------------------------------------------------------------------------------


async def test_a_new_cluster_starts_with_its_scheduler_queued(service: Service) -> None:
    async with service.admin() as c:
        made = await create(c, workers=2)
        assert made["name"] == "era5" and made["state"] == "starting"
        assert (made["account"], made["profile"]) == ("physics/lab-a", "small")
        # The profile's size, as a session gets it; threads from its CPUs.
        assert made["worker"] == {"cpus": 2.0, "memory": 8 * GIB, "gpus": 0, "threads": 2}
        assert (made["workers"], made["adapt"], made["running"], made["requested"]) == (
            2,
            None,
            0,
            2,
        )
        assert made["address"] is None and made["dashboard_link"] is None
        assert made["shutdown_on_close"] is True and made["session"] is None
        assert (made["cost_per_hour"], made["currency"]) == (0.0, "EUR")
        # Its scheduler is a workload like any other, on the first local profile, at the
        # policy's scheduler size (1 CPU, 1G by default).
        r = await c.get(f"workloads/{made['scheduler']}")
        assert r.status_code == 200, r.text
        w = r.json()
        assert (w["kind"], w["name"], w["status"]) == (
            "dask-scheduler",
            "era5-scheduler",
            "pending",
        )
        assert (w["pool"], w["profile"], w["cpus"], w["memory"]) == (
            "workstation",
            "small",
            1.0,
            GIB,
        )
        assert w["account"] == "physics/lab-a"
        assert w["command"][0] == sys.executable
        got = (await c.get("dask/clusters/era5")).json()
        assert got == made
    async with database(service).read() as s:
        row = (await s.execute(select(DaskCluster))).scalar_one()
        sched = (await s.execute(select(Workload))).scalar_one()
    assert row.scheduler_id == sched.id and sched.cluster_id == row.id
    assert row.versions == VERSIONS and row.python == sys.executable
    assert sched.env is not None and sched.env["ALLOT_DASK_TLS_KEY"] == row.tls_key
    assert sched.env["ALLOT_DASK_SERVICE_URL"] == "http://127.0.0.1:8750/services/allotment/"
    assert (
        sched.env["ALLOT_DASK_DASHBOARD_PREFIX"] == f"/services/allotment/dask/{row.id}/dashboard"
    )


async def test_worker_options_are_bounded_by_the_profile(service: Service) -> None:
    async with service.admin() as c:
        made = await create(c, cpus=1.5, memory="4G")
        assert made["worker"] == {"cpus": 1.5, "memory": 4 * GIB, "gpus": 0, "threads": 2}
        made = await create(c, name="threads", cpus=4, threads=1)
        assert made["worker"]["threads"] == 1
        # Adaptive from the start: the workers asked for are within the bounds.
        made = await create(c, name="adaptive", workers=0, adapt={"minimum": 1, "maximum": 4})
        assert made["adapt"] == {"minimum": 1, "maximum": 4} and made["workers"] == 1
        names = [x["name"] for x in (await c.get("dask/clusters")).json()]
        assert names == ["adaptive", "threads", "era5"]


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"profile": None}, 422, "Name the workers' `profile`"),
        ({"profile": "nope"}, 404, "no profile 'nope'"),
        ({"profile": "gpu-a100", "account": "lab-b"}, 403, "not offered to account"),
        ({"account": "lab-z"}, 404, "no account 'lab-z'"),
        ({"cpus": 64}, 422, "allows 1 to 16 CPUs"),
        ({"memory": "lots"}, 422, "'lots' is not a size"),
        ({"gpus": 1}, 422, "fixed GPUs of 0"),
        ({"name": "Era 5"}, 422, "name 'Era 5' must be 1-63 lower-case"),
        ({"name": "x" * 64}, 422, "body.name"),
        ({"python": "python3"}, 422, "absolute path"),
        ({"workers": 65}, 400, "at most 64 workers"),
        ({"adapt": {"minimum": 3, "maximum": 2}}, 422, "minimum (3) above its maximum (2)"),
        ({"adapt": {"maximum": 100}}, 400, "at most 64 workers"),
        ({"session": 12345}, 404, "no running session 12345"),
        ({"threads": 0}, 422, "body.threads"),
        ({"colour": "red"}, 422, "body.colour"),
    ],
)
async def test_refusals_say_what_is_wrong(
    service: Service, body: dict[str, Any], status: int, words: str
) -> None:
    async with service.admin() as c:
        r = await c.post("dask/clusters", json=cluster(**body))
        assert r.status_code == status, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert words in r.json()["detail"]
        # Nothing was made.
        assert (await c.get("dask/clusters", params={"ended": True})).json() == []
        assert (await c.get("workloads")).json()["items"] == []


async def test_a_name_is_unique_among_live_clusters_and_clusters_per_user_hold(
    dask_service: Service,
) -> None:
    async with dask_service.admin() as c:
        first = await create(c)
        r = await c.post("dask/clusters", json=cluster())
        assert r.status_code == 409 and "already have a Dask cluster called 'era5'" in r.text
        await create(c, name="second")
        r = await c.post("dask/clusters", json=cluster(name="third"))
        assert r.status_code == 409, r.text
        assert "2 Dask clusters running" in r.json()["detail"]
        assert "era5, second" in r.json()["detail"]
        # The policy's own maximum of workers (8 here).
        r = await c.post("dask/clusters", json=cluster(name="big", workers=9))
        assert r.status_code == 400 and "at most 8 workers" in r.json()["detail"]
        # Once one has ended, its name and its place may be used again.
        await set_cluster(dask_service, first["id"], state=int(ClusterState.STOPPED))
        again = await create(c)
        assert again["id"] != first["id"]
        assert (await c.get("dask/clusters/era5")).json()["id"] == again["id"]
        listed = (await c.get("dask/clusters")).json()
        assert [x["name"] for x in listed] == ["era5", "second"]
        everything = (await c.get("dask/clusters", params={"ended": "true"})).json()
        assert [(x["id"], x["state"]) for x in everything] == [
            (again["id"], "starting"),
            (listed[1]["id"], "starting"),
            (first["id"], "stopped"),
        ]


async def test_creations_at_once_keep_to_the_limits(dask_service: Service) -> None:
    """Checked one after the other per user, however many arrive together (PostgreSQL's
    concurrent transactions included)."""
    async with dask_service.admin() as c:
        same = await asyncio.gather(*(c.post("dask/clusters", json=cluster()) for _ in range(3)))
        assert sorted(r.status_code for r in same) == [201, 409, 409]
        names = [f"c{i}" for i in range(4)]
        many = await asyncio.gather(*(c.post("dask/clusters", json=cluster(name=n)) for n in names))
        assert sorted(r.status_code for r in many) == [201, 409, 409, 409]
        assert len((await c.get("dask/clusters")).json()) == 2


async def test_a_made_up_name_when_none_is_given(service: Service) -> None:
    async with service.admin() as c:
        made = await create(c, name=None)
        assert made["name"].startswith("dask-")
        assert (await c.get(f"dask/clusters/{made['name']}")).status_code == 200


async def test_a_scheduler_profile_the_policy_lacks_is_said(service: Service) -> None:
    text = DEPARTMENT + "\ndask:\n  scheduler_profile: gone\n"
    async with service.admin() as c:
        r = await c.put("policy", json={"text": text, "filename": "p.yaml"})
        assert r.status_code == 200, r.text
        r = await c.post("dask/clusters", json=cluster())
        assert r.status_code == 409, r.text
        assert "profile 'gone' (`dask.scheduler_profile`)" in r.json()["detail"]


# --- scale, adapt, stop, heartbeat ----------------------------------------------------------


async def test_scale_adapt_and_stop(dask_service: Service) -> None:
    async with dask_service.admin() as c:
        made = await create(c, workers=1)
        r = await c.post("dask/clusters/era5/scale", json={"workers": 4})
        assert r.status_code == 200, r.text
        assert (r.json()["workers"], r.json()["adapt"], r.json()["requested"]) == (4, None, 4)
        r = await c.post("dask/clusters/era5/scale", json={"workers": 9})
        assert r.status_code == 400 and "at most 8 workers" in r.json()["detail"]
        r = await c.post("dask/clusters/era5/adapt", json={"minimum": 0, "maximum": 2})
        assert r.status_code == 200, r.text
        # The workers asked for move into the new bounds at once.
        assert (r.json()["adapt"], r.json()["workers"]) == ({"minimum": 0, "maximum": 2}, 2)
        r = await c.post("dask/clusters/era5/adapt", json={"minimum": 3, "maximum": 1})
        assert r.status_code == 422
        r = await c.post("dask/clusters/era5/adapt", json={"maximum": 9})
        assert r.status_code == 400
        # Scaling ends adaptive scaling.
        r = await c.post("dask/clusters/era5/scale", json={"workers": 0})
        assert (r.json()["workers"], r.json()["adapt"]) == (0, None)
        r = await c.post("dask/clusters/era5/stop")
        assert r.status_code == 200, r.text
        stopped = r.json()
        assert stopped["state"] == "stopping"
        assert stopped["reason"].startswith("stopped by admin-token/")
        # Stopping again answers it as it is; scaling it is refused.
        again = await c.post("dask/clusters/era5/stop")
        assert again.status_code == 200 and again.json()["reason"] == stopped["reason"]
        for action, body in (("scale", {"workers": 1}), ("adapt", {"maximum": 1})):
            r = await c.post(f"dask/clusters/era5/{action}", json=body)
            assert r.status_code == 409, r.text
            assert "is stopping (stopped by admin-token/" in r.json()["detail"]
        # Still listed while stopping; the controller ends it, then only `ended` shows it.
        assert [x["id"] for x in (await c.get("dask/clusters")).json()] == [made["id"]]
        await set_cluster(dask_service, made["id"], state=int(ClusterState.STOPPED))
        assert (await c.get("dask/clusters")).json() == []
        r = await c.get("dask/clusters/era5/credentials")
        assert r.status_code == 409 and "has ended" in r.json()["detail"]
        for action in ("scale", "adapt", "stop", "heartbeat"):
            r = await c.post(f"dask/clusters/nope/{action}", json={"workers": 1, "maximum": 1})
            assert r.status_code in (404, 422), r.text
        r = await c.post("dask/clusters/nope/stop")
        assert r.status_code == 404 and "no Dask cluster called 'nope'" in r.json()["detail"]


async def test_the_clients_heartbeat_is_recorded(service: Service) -> None:
    async with service.admin() as c:
        made = await create(c)
        service.clock.advance(30)
        r = await c.post("dask/clusters/era5/heartbeat")
        assert r.status_code == 200 and r.json()["id"] == made["id"]
    async with database(service).read() as s:
        seen = (await s.execute(select(DaskCluster.client_seen_at))).scalar_one()
    assert seen == service.clock.now()


# --- what a cluster reports of its workloads --------------------------------------------------


async def test_running_requested_waiting_and_cost(service: Service) -> None:
    async with service.admin() as c:
        made = await create(c, workers=3)
        cid = made["id"]
        token = await token_of(service, cid)
        # While its scheduler waits, the cluster says so.
        await set_workload(
            service,
            made["scheduler"],
            reason="waiting for capacity",
            expected_start=datetime(2030, 1, 1, tzinfo=UTC),
        )
        got = (await c.get("dask/clusters/era5")).json()
        assert got["waiting_reason"] == "its scheduler is pending: waiting for capacity"
        assert got["expected_start"].startswith("2030-01-01T00:00:00")
        await set_workload(service, made["scheduler"], status=int(WorkloadState.RUNNING))
        assert (await report(service, token)).status_code == 200
        # One worker runs, one waits in the queue, one the controller has not made yet.
        eta = datetime(2030, 1, 2, tzinfo=UTC)
        await add_worker(service, cid, status=int(WorkloadState.RUNNING))
        await add_worker(
            service, cid, reason="account physics/lab-a is at its quota", position=2,
            expected_start=eta,
        )  # fmt: skip
        # One that ended long ago counts for nothing.
        await add_worker(service, cid, status=int(WorkloadState.FAILED))
        got = (await c.get("dask/clusters/era5")).json()
        assert got["state"] == "running"
        assert (got["running"], got["requested"]) == (1, 2)
        assert got["waiting_reason"] == "account physics/lab-a is at its quota"
        assert got["expected_start"].startswith("2030-01-02T00:00:00")
        # Scheduler (1 CPU, 1 GiB) and the running worker (2 CPUs, 8 GiB) at the
        # workstation's rates (0.01 per CPU, 0.001 per GiB).
        assert got["cost_per_hour"] == pytest.approx(0.011 + 0.028)
        assert got["address"] == "tls://127.0.0.1:40001"
        assert got["dashboard_link"] == f"/services/allotment/dask/{cid}/dashboard/status"


# --- the scheduler's report -------------------------------------------------------------------


async def test_the_report_moves_the_cluster_to_running_and_tracks_idle_time(
    service: Service,
) -> None:
    async with service.admin() as c:
        made = await create(c)
        token = await token_of(service, made["id"])
        r = await report(service, token, clients=1, tasks=3)
        assert r.status_code == 200, r.text
        assert r.json() == {"retire": [], "report_every": 5.0}
        got = (await c.get("dask/clusters/era5")).json()
        assert (got["state"], got["idle_since"]) == ("running", None)
        # Idle (no client, no task): since the first idle report, not the latest.
        first = service.clock.now()
        assert (await report(service, token)).status_code == 200
        service.clock.advance(60)
        assert (await report(service, token)).status_code == 200
        got = (await c.get("dask/clusters/era5")).json()
        assert datetime.fromisoformat(got["idle_since"]) == first
        # A task, and it is busy again.
        assert (await report(service, token, tasks=1)).status_code == 200
        assert (await c.get("dask/clusters/era5")).json()["idle_since"] is None
    async with database(service).read() as s:
        seen = (await s.execute(select(DaskCluster.scheduler_seen_at))).scalar_one()
    assert seen == service.clock.now()


async def test_adaptive_targets_are_clamped_to_the_bounds_and_the_site(
    dask_service: Service,
) -> None:
    async with dask_service.admin() as c:
        made = await create(c, adapt={"minimum": 1, "maximum": 5})
        token = await token_of(dask_service, made["id"])
        for target, workers in ((3, 3), (0, 1), (50, 5)):
            assert (await report(dask_service, token, adaptive_target=target)).status_code == 200
            assert (await c.get("dask/clusters/era5")).json()["workers"] == workers
        # A cluster made before the site lowered its maximum is held to the new one.
        await set_cluster(dask_service, made["id"], adapt_maximum=100)
        assert (await report(dask_service, token, adaptive_target=50)).status_code == 200
        assert (await c.get("dask/clusters/era5")).json()["workers"] == 8
        # Not adaptive: the scheduler's target changes nothing.
        await c.post("dask/clusters/era5/scale", json={"workers": 2})
        assert (await report(dask_service, token, adaptive_target=7)).status_code == 200
        assert (await c.get("dask/clusters/era5")).json()["workers"] == 2


@pytest.mark.parametrize(
    ("versions", "words"),
    [
        ({**VERSIONS, "dask": "2025.1.0"}, "dask 2026.8.0 in the client but 2025.1.0"),
        (
            {**VERSIONS, "distributed": "2026.9.1"},
            "distributed 2026.8.0 in the client but 2026.9.1",
        ),
        ({**VERSIONS, "python": "3.12.1"}, "Python 3.11.7 in the client but 3.12.1"),
    ],
)
async def test_versions_that_differ_stop_the_cluster_with_the_reason(
    service: Service, versions: dict[str, str], words: str
) -> None:
    async with service.admin() as c:
        made = await create(c)
        token = await token_of(service, made["id"])
        assert (await report(service, token, versions=versions)).status_code == 200
        got = (await c.get("dask/clusters/era5")).json()
        assert got["state"] == "stopping"
        assert got["reason"].startswith("failed: version mismatch: ") and words in got["reason"]


async def test_a_python_patch_release_is_no_mismatch(service: Service) -> None:
    async with service.admin() as c:
        made = await create(c)
        token = await token_of(service, made["id"])
        same = {**VERSIONS, "python": "3.11.9"}
        assert (await report(service, token, versions=same)).status_code == 200
        assert (await c.get("dask/clusters/era5")).json()["state"] == "running"


async def test_the_report_needs_its_clusters_token(service: Service) -> None:
    async with service.admin() as c:
        made = await create(c)
    token = await token_of(service, made["id"])
    assert token.startswith("allot_dask_")
    for wrong in (None, "allot_dask_" + "x" * 43, service.admin_token, token[:-1]):
        r = await report(service, wrong) if wrong else None
        if r is None:
            async with service.client() as anonymous:
                r = await anonymous.post("dask/report", json={"address": "tls://a:1"})
        assert r.status_code == 401, r.text
        assert r.headers["content-type"] == "application/problem+json"
    # Plain TCP or HTTP would let anyone on the machine in: refused.
    r = await report(service, token, address="tcp://127.0.0.1:1")
    assert r.status_code == 422 and "tls:// only" in r.json()["detail"]
    r = await report(service, token, dashboard="http://127.0.0.1:2")
    assert r.status_code == 422 and "https:// only" in r.json()["detail"]
    # A cluster that has ended: its scheduler is told so.
    await set_cluster(
        service,
        made["id"],
        state=int(ClusterState.STOPPED),
        ended_at=service.clock.now() + timedelta(seconds=1),
    )
    r = await report(service, token)
    assert r.status_code == 404 and "has ended" in r.json()["detail"]


async def test_a_stopping_cluster_still_reports_but_asks_for_nothing(service: Service) -> None:
    async with service.admin() as c:
        made = await create(c, adapt={"minimum": 0, "maximum": 4})
        token = await token_of(service, made["id"])
        await c.post("dask/clusters/era5/stop")
        r = await report(service, token, adaptive_target=4)
        assert r.status_code == 200
        got = (await c.get("dask/clusters/era5")).json()
        assert (got["state"], got["workers"]) == ("stopping", 0)
