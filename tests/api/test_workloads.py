"""Workloads over HTTP on both databases: create, validate, list, filter, page, cancel."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.support.service import Service, running_service


async def test_create_from_a_profile(service: Service) -> None:
    async with service.admin() as c:
        r = await c.post(
            "workloads",
            json={
                "profile": "gpu-a100",
                "account": "lab-a",
                "gpus": 2,
                "name": "train",
                "command": ["python", "t.py"],
            },
        )
    assert r.status_code == 201, r.text
    w = r.json()
    assert (w["cpus"], w["memory"], w["gpus"]) == (8.0, 64 * 1024**3, {"a100": 2})
    assert (w["status"], w["target"], w["account"], w["pool"]) == (
        "pending",
        "running",
        "physics/lab-a",
        "gpu",
    )
    assert w["max_runtime"] == 24 * 3600
    assert w["command"] == ["python", "t.py"]


async def test_create_without_a_profile(service: Service) -> None:
    async with service.admin() as c:
        r = await c.post(
            "workloads",
            json={
                "pool": "gpu",
                "account": "lab-b",
                "cpus": 4,
                "memory": "16G",
                "gpus": {"h100": 2},
                "max_runtime": "2h",
                "command": ["nvidia-smi"],
            },
        )
    assert r.status_code == 201, r.text
    assert r.json()["gpus"] == {"h100": 2} and r.json()["max_runtime"] == 7200


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"profile": "nope", "account": "lab-a"}, 404, "no profile 'nope'"),
        ({"profile": "small", "command": ["true"], "account": "lab-z"}, 404, "no account 'lab-z'"),
        (
            {"profile": "small", "command": ["true"], "account": "lab-a", "cpus": 64},
            422,
            "allows 1 to 16 CPUs",
        ),
        (
            {"profile": "small", "command": ["true"], "account": "lab-a", "memory": "lots"},
            422,
            "'lots' is not a size",
        ),
        ({"profile": "gpu-a100", "account": "lab-b"}, 403, "not offered to account"),
        (
            {"profile": "small", "command": ["true"], "account": "lab-a", "max_runtime": "9h"},
            422,
            "at most 28800 s",
        ),
        (
            {"pool": "gpu", "account": "lab-a", "cpus": 100, "memory": "1G"},
            422,
            "No node can ever run this",
        ),
        ({"pool": "gpu", "account": "lab-a", "cpus": 1}, 422, "give both `cpus` and `memory`"),
        ({"account": "lab-a"}, 422, "Name a `profile`"),
        (
            {"profile": "small", "command": ["true"], "account": "lab-a", "colour": "red"},
            422,
            "body.colour",
        ),
        (
            {"profile": "small", "command": ["true"], "account": "lab-a", "cpus": -1},
            422,
            "body.cpus",
        ),
        (
            {"profile": "small", "command": ["true"], "account": "lab-a", "kind": "vm"},
            422,
            "body.kind",
        ),
    ],
)
async def test_bad_requests_get_problem_details(
    service: Service, body: dict[str, object], status: int, words: str
) -> None:
    async with service.admin() as c:
        r = await c.post("workloads", json=body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["status"] == status
    assert words in problem["detail"]


async def test_malformed_json_is_a_problem(service: Service) -> None:
    async with service.admin() as c:
        r = await c.post(
            "workloads", content=b"{not json", headers={"content-type": "application/json"}
        )
    assert r.status_code == 422
    assert r.json()["title"] == "Invalid request"


async def test_idempotency_key_makes_a_retry_safe(service: Service) -> None:
    body = {"profile": "small", "command": ["true"], "account": "lab-a"}
    async with service.admin() as c:
        first = await c.post("workloads", json=body, headers={"Idempotency-Key": "abc"})
        again = await c.post("workloads", json=body, headers={"Idempotency-Key": "abc"})
        other = await c.post("workloads", json=body, headers={"Idempotency-Key": "def"})
        listed = (await c.get("workloads")).json()["items"]
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"] != other.json()["id"]
    assert len(listed) == 2


async def test_listing_pages_and_filters(service: Service) -> None:
    async with service.admin() as c:
        ids = []
        for i in range(25):
            account = "proj-x" if i % 5 == 0 else ("lab-b" if i % 2 else "lab-a")
            service.clock.advance(60)
            r = await c.post(
                "workloads", json={"profile": "small", "command": ["true"], "account": account}
            )
            ids.append(r.json()["id"])
        await c.post(f"workloads/{ids[3]}/cancel")

        seen, cursor = [], None
        while True:
            params = {"limit": 10, **({"cursor": cursor} if cursor else {})}
            page = (await c.get("workloads", params=params)).json()
            seen += [w["id"] for w in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == sorted(ids, reverse=True)

        page3 = (await c.get("workloads", params={"limit": 10, "page": 3})).json()
        assert [w["id"] for w in page3["items"]] == sorted(ids, reverse=True)[20:]
        assert page3["next_cursor"] is None

        lab_a = (await c.get("workloads", params={"account": "lab-a", "limit": 100})).json()
        assert {w["account"] for w in lab_a["items"]} == {"physics/lab-a", "physics/lab-a/proj-x"}
        only_x = (await c.get("workloads", params={"account": "physics/lab-a/proj-x"})).json()
        assert len(only_x["items"]) == 5

        stopped = (await c.get("workloads", params={"status": "stopped"})).json()["items"]
        assert [w["id"] for w in stopped] == [ids[3]]
        both = (
            await c.get("workloads", params=[("status", "stopped"), ("status", "pending")])
        ).json()
        assert len(both["items"]) == 25

        cutoff = datetime(2026, 1, 1, 0, 20, 30, tzinfo=UTC)  # FakeClock starts at midnight
        recent = (await c.get("workloads", params={"since": cutoff.isoformat()})).json()["items"]
        assert len(recent) == 5

        r = await c.get("workloads", params={"since": "2026-01-01T00:00:00"})
        assert r.status_code == 422 and "time zone" in r.json()["detail"]
        r = await c.get("workloads", params={"cursor": "xyz"})
        assert r.status_code == 422
        r = await c.get("workloads", params={"limit": 5000})
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "query.limit"


async def test_cancel_stops_a_pending_workload_once(service: Service) -> None:
    async with service.admin() as c:
        wid = (
            await c.post(
                "workloads", json={"profile": "small", "command": ["true"], "account": "lab-a"}
            )
        ).json()["id"]
        r = await c.post(f"workloads/{wid}/cancel")
        assert (r.status_code, r.json()["status"], r.json()["target"]) == (
            200,
            "stopped",
            "stopped",
        )
        r = await c.post(f"workloads/{wid}/cancel")
        assert r.status_code == 409 and "already stopped" in r.json()["detail"]
        assert (await c.post("workloads/999999/cancel")).status_code == 404


async def test_workloads_survive_a_restart(database_url: str, tmp_path: Path) -> None:
    async with running_service(database_url, tmp_path / "d") as svc, svc.admin() as c:
        wid = (
            await c.post(
                "workloads", json={"profile": "small", "command": ["true"], "account": "lab-a"}
            )
        ).json()["id"]
    async with running_service(database_url, tmp_path / "d") as svc, svc.admin() as c:
        r = await c.get(f"workloads/{wid}")
        assert r.status_code == 200 and r.json()["status"] == "pending"


async def test_unauthenticated_and_unknown_paths(service: Service) -> None:
    async with service.client() as c:
        r = await c.get("workloads")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert (await c.get("health")).json()["status"] == "ok"
    async with service.admin() as c:
        assert (await c.get("no/such/thing")).status_code == 404
        assert (await c.delete("workloads")).status_code == 405
    async with service.client("allot_admin_forged") as c:
        assert (await c.get("me")).status_code == 401
