"""Every input is bounded (security issue 11, part 3): the request body, each argument and
environment value, the command plus environment, names, counts and integers; what could never
start is refused at submission; a user has a cap on waiting workloads; an activity report
cannot come from the future. Each refusal is problem details that say the limit."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from allotment.api.app import Settings, create_app, settings_from_policy
from allotment.clock import FakeClock
from allotment.config import load_policy, parse_policy
from allotment.db.tables import Workload
from tests.support.service import BASE, ROOT, Service, running_service

JOB = {"profile": "small", "account": "lab-a", "command": ["python", "train.py"]}
KIB = 1024
MIB = 1024 * KIB


def problem(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["status"] == status
    return str(r.json()["detail"])


@asynccontextmanager
async def service_with_body_limit(
    database_url: str, data_dir: Path, limit: int
) -> AsyncIterator[httpx.AsyncClient]:
    policy = load_policy(ROOT / "examples/department.yaml", environ={})
    app = create_app(
        Settings(database_url, data_dir, policy=policy, max_request_body=limit),
        clock=FakeClock(),
    )
    async with app.router.lifespan_context(app):
        token = (data_dir / "admin-token").read_text().strip()
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url=BASE,
            headers={"Authorization": f"token {token}"},
        ) as c:
            yield c


async def test_a_body_over_the_limit_is_refused_before_it_is_read(service: Service) -> None:
    body = {**JOB, "command": ["echo", "x" * (100 * KIB)] * 11}  # 1.1 MiB of JSON
    async with service.admin() as c:
        detail = problem(await c.post("workloads", json=body), 413)
        assert "the limit is 1 MiB" in detail and "1.1 MiB" in detail

        # Without a Content-Length (chunked), it is counted as it arrives.
        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"command": ["'
            for _ in range(40):
                yield b"x" * (64 * KIB)
            yield b'"]}'

        r = await c.post(
            "workloads", content=chunks(), headers={"content-type": "application/json"}
        )
        assert "more than 1 MiB" in problem(r, 413)
        # Under the limit, the same endpoint works.
        assert (await c.post("workloads", json=JOB)).status_code == 201


def test_the_body_limit_is_configured_in_the_policy() -> None:
    policy = parse_policy("service: {max_request_body: 64K}\n", environ={})
    assert settings_from_policy(policy).max_request_body == 64 * KIB
    assert settings_from_policy(parse_policy("{}", environ={})).max_request_body == MIB


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (
            {"command": ["python", "x" * (200 * KIB)]},
            "`command[1]` is 200.0 KiB; the limit for one argument or environment variable "
            "is 128 KiB",
        ),
        (
            {"env": {"DATA": "é" * (70 * KIB)}},  # 140 KiB in UTF-8: bytes count, not letters
            "`env.DATA` is 140.0 KiB; the limit for one argument",
        ),
    ],
)
async def test_each_argument_and_environment_value_is_bounded(
    service: Service, change: dict[str, object], words: str
) -> None:
    async with service.admin() as c:
        assert words in problem(await c.post("workloads", json={**JOB, **change}), 422)


async def test_the_command_plus_environment_is_bounded(database_url: str, tmp_path: Path) -> None:
    # A body limit raised for large policies does not let a command past the kernel's limits.
    async with service_with_body_limit(database_url, tmp_path / "data", 8 * MIB) as c:
        body = {**JOB, "command": ["python"] + ["x" * (120 * KIB)] * 6}
        body["env"] = {f"V{i}": "y" * (120 * KIB) for i in range(4)}
        detail = problem(await c.post("workloads", json=body), 422)
        assert (
            "`command` and `env` are 1.2 MiB; the limit for a command plus its environment "
            "is 1 MiB" in detail
        )
        body = {**JOB, "command": ["python"] + ["x" * (120 * KIB)] * 3}
        assert (await c.post("workloads", json=body)).status_code == 201


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"command": ["python", "a\0b"]}, "body.command.1: Value error, may not contain a NUL"),
        ({"env": {"A": "\0"}}, "body.env.A: Value error, may not contain a NUL"),
        ({"name": "x\0"}, "body.name: Value error, may not contain a NUL"),
        ({"workdir": "/tmp/\0"}, "body.workdir: Value error, may not contain a NUL"),
        ({"command": ["", "x"]}, "`command` is empty"),
        ({"command": []}, "A job needs a `command`"),
        ({"max_runtime": 0}, "`max_runtime` is 0"),
        ({"max_runtime": "0s"}, "`max_runtime` is 0"),
        ({"max_runtime": "9999d"}, "the limit is 31536000 s"),
        ({"gpus": -1}, "greater than or equal to 0"),
        ({"array": "99999999999"}, "indices go up to 4000000"),
    ],
)
async def test_what_can_never_start_is_refused(
    service: Service, change: dict[str, object], words: str
) -> None:
    async with service.admin() as c:
        assert words in problem(await c.post("workloads", json={**JOB, **change}), 422)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"memory": "1M"}, "`memory` is 1 MiB; a workload needs at least 16 MiB"),
        ({"memory": 0}, "`memory` is 0 bytes"),
        (
            {"memory": "4G", "gpus": {"a100": -1}},
            "body.gpus.by_model.a100: Input should be greater than or equal to 0",
        ),
        ({"memory": "4G", "gpus": {"a100": 10**30}}, "less than or equal to 4096"),
    ],
)
async def test_sizes_that_could_never_run_are_refused(
    service: Service, body: dict[str, object], words: str
) -> None:
    request = {"pool": "gpu", "account": "lab-a", "cpus": 1, "command": ["true"], **body}
    async with service.admin() as c:
        assert words in problem(await c.post("workloads", json=request), 422)
        listed = (await c.get("workloads")).json()["items"]
    assert listed == []


@pytest.mark.parametrize(
    ("method", "path", "params", "body", "words"),
    [
        ("POST", "workloads", {}, {**JOB, "after": 2**64}, "body.after"),
        ("POST", "workloads", {}, {**JOB, "after": 0}, "body.after"),
        ("GET", f"workloads/{2**64}", {}, None, "path.workload_id"),
        ("POST", f"workloads/{2**63}/cancel", {}, None, "path.workload_id"),
        ("GET", f"workloads/{2**63}/meter", {}, None, "path.workload_id"),
        ("GET", "workloads", {"array": 2**64}, None, "query.array"),
        ("GET", "workloads", {"cursor": "9" * 30}, None, "`cursor` is not one"),
        ("GET", "workloads", {"cursor": "²"}, None, "`cursor` is not one"),
        ("GET", "workloads", {"since": "0001-01-01T00:00:00+05:00"}, None, "`since` is outside"),
        ("GET", "workloads/1/output", {"offset": 2**70}, None, "query.offset"),
        ("PATCH", "accounts/physics", {}, {"shares": 2**40}, "body.shares"),
        ("PUT", f"accounts/physics/members/{'u' * 300}", {}, {"role": "member"}, "path.user"),
        ("GET", f"users/{'u' * 300}", {}, None, "path.name"),
    ],
)
async def test_numbers_and_names_out_of_range_get_422(
    service: Service,
    method: str,
    path: str,
    params: dict[str, object],
    body: object,
    words: str,
) -> None:
    async with service.admin() as c:
        r = await c.request(method, path, params=params, json=body)
    assert words in problem(r, 422)


async def test_a_nul_in_the_address_is_refused(service: Service) -> None:
    async with service.admin() as c:
        for path in ("users/a%00b", "accounts/physics%00", "workloads?user=a%00b"):
            assert "NUL character" in problem(await c.get(path), 422)


@asynccontextmanager
async def capped_admin(
    database_url: str, tmp_path: Path, cache_seconds: int
) -> AsyncIterator[httpx.AsyncClient]:
    """The admin's client of a service whose users may have 5 workloads waiting."""
    text = (ROOT / "examples/department.yaml").read_text()
    text = text.replace("\nlimits:\n", "\nlimits:\n  pending_per_user: 5\n")
    async with running_service(
        database_url, tmp_path / "data", policy_text=text, token_cache_seconds=cache_seconds
    ) as svc:
        async with svc.admin() as c:
            yield c


@pytest.mark.parametrize("cache_seconds", [0, 60], ids=["counted", "cached"])
async def test_a_user_has_a_cap_on_waiting_workloads(
    database_url: str, tmp_path: Path, cache_seconds: int
) -> None:
    async with capped_admin(database_url, tmp_path, cache_seconds) as c:
        assert (await c.post("workloads", json={**JOB, "array": "0-2"})).status_code == 201
        # Array tasks count one by one.
        detail = problem(await c.post("workloads", json={**JOB, "array": "0-2"}), 409)
        assert (
            "You have 3 workloads waiting to start and this array adds 3; a user may have "
            "at most 5 waiting (limits.pending_per_user)" in detail
        )
        for _ in range(2):
            assert (await c.post("workloads", json=JOB)).status_code == 201
        assert "at most 5 waiting" in problem(await c.post("workloads", json=JOB), 409)
        # Ones that stop waiting make room.
        first = (await c.get("workloads")).json()["items"][0]["id"]
        assert (await c.post(f"workloads/{first}/cancel")).status_code == 200
        assert (await c.post("workloads", json=JOB)).status_code == 201


async def test_the_default_cap_is_ten_thousand(service: Service) -> None:
    state = service.app.state.allotment
    assert await state.pending_cap() == 10_000
    # Two arrays of the largest size fit; a third task does not.
    async with service.admin() as c:
        assert (await c.post("workloads", json={**JOB, "array": "0-9999"})).status_code == 201
        detail = problem(await c.post("workloads", json={**JOB, "array": "0-1"}), 409)
    assert "You have 10,000 workloads waiting" in detail


async def test_the_openapi_document_describes_problem_details(service: Service) -> None:
    async with service.client() as c:
        document = (await c.get("openapi.json")).json()
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            problem_schema = operation["responses"]["4XX"]["content"]["application/problem+json"]
            assert problem_schema["schema"] == {"$ref": "#/components/schemas/Problem"}, (
                method,
                path,
            )
            assert "422" not in operation["responses"]


async def _last_activity(service: Service, workload: int) -> object:
    async with service.app.state.allotment.db.read() as session:
        return (
            await session.execute(select(Workload.last_activity).where(Workload.id == workload))
        ).scalar_one()


@pytest.mark.jupyterhub
async def test_activity_from_the_future_is_clamped_to_the_servers_clock(
    hub_service: Service, hub: object
) -> None:
    from tests.support.hub import Hub

    assert isinstance(hub, Hub)
    acting = {"X-Allotment-User": "bob"}
    async with hub_service.client(hub.spawner_token) as c:
        r = await c.post(
            "workloads",
            headers=acting,
            json={"kind": "session", "profile": "small", "command": ["jupyterhub-singleuser"]},
        )
        session = problem_free(r, 201)
    async with hub_service.client(hub.token("bob")) as c:
        r = await c.post(
            f"workloads/{session}/activity", json={"last_activity": "2099-01-01T00:00:00Z"}
        )
        assert r.status_code == 204, r.text
        assert await _last_activity(hub_service, session) == hub_service.clock.now()
        r = await c.post(
            f"workloads/{session}/activity",
            json={"last_activity": "0001-01-01T00:00:00+05:00"},
        )
        assert "`last_activity` is outside the years 1 to 9999" in problem(r, 422)


def problem_free(r: httpx.Response, status: int) -> int:
    assert r.status_code == status, r.text
    return int(r.json()["id"])


def test_the_body_limit_can_come_from_the_environment() -> None:
    policy = parse_policy("{}", environ={"ALLOTMENT_MAX_REQUEST_BODY": "2M"})
    assert policy.service.max_request_body == 2 * 2**20


@pytest.mark.skipif(os.geteuid() != 0, reason="private /tmp needs root (a mount namespace)")
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("workdir", "/tmp/project"),
        ("workdir", "/tmp"),
        ("stdout", "/dev/shm/out"),
        ("stderr", "/tmp/e"),
    ],
)
async def test_a_job_cannot_use_the_machines_tmp_which_it_never_sees(
    service: Service, field: str, value: str
) -> None:
    """Review finding: output under /tmp went to the job's private /tmp and was lost, and
    `allot logs` then read the machine's /tmp instead."""
    async with service.admin() as admin:
        r = await admin.post(
            "workloads",
            json={"profile": "small", "account": "lab-a", "command": ["true"], field: value},
        )
    assert r.status_code == 422, r.text
    assert f"`{field}` is {value}, under /" in r.json()["detail"]


@pytest.mark.parametrize("name", ["OPTIND", "UID", "SHELLOPTS"])
async def test_environment_names_the_shell_keeps_are_refused(service: Service, name: str) -> None:
    async with service.admin() as admin:
        r = await admin.post(
            "workloads",
            json={"profile": "small", "account": "lab-a", "command": ["true"], "env": {name: "1"}},
        )
    assert r.status_code == 422, r.text
    assert f"`env` has {name}, which the shell" in r.json()["detail"]


@pytest.mark.parametrize("cache_seconds", [0, 60])
async def test_the_cap_holds_when_submissions_arrive_at_once(
    database_url: str, tmp_path: Path, cache_seconds: int
) -> None:
    """Review finding: concurrent submissions each read the same count and passed (100 of 100
    accepted against a cap of 5 on PostgreSQL; 10 arrays of 5 left 50 waiting)."""
    async with capped_admin(database_url, tmp_path, cache_seconds) as c:
        # Arrays of two and single jobs, all at once.
        bodies = [{**JOB, "array": "0-1"}] * 10 + [JOB] * 40
        replies = await asyncio.gather(*(c.post("workloads", json=b) for b in bodies))
        waiting = (await c.get("workloads", params={"status": "pending", "limit": 100})).json()
        assert {r.status_code for r in replies} == {201, 409}
        made = sum(
            2 if "array" in b else 1
            for b, r in zip(bodies, replies, strict=True)
            if r.status_code == 201
        )
        assert made in (4, 5)  # an array of two may not fit the last place
        assert len(waiting["items"]) == made


async def test_an_empty_idempotency_key_is_refused_not_a_500(service: Service) -> None:
    async with service.admin() as c:
        for body in (JOB, {**JOB, "array": "0-1"}):
            for key in ("", " ", "a b"):
                r = await c.post("workloads", json=body, headers={"Idempotency-Key": key})
                assert r.status_code == 422, (key, r.text)


async def test_concurrent_replays_of_an_arrays_key_make_one_array(service: Service) -> None:
    """Review finding: on PostgreSQL, 8 concurrent replays answered 500 to all but one."""
    async with service.admin() as c:
        replies = await asyncio.gather(
            *(
                c.post("workloads", json={**JOB, "array": "0-3"}, headers={"Idempotency-Key": "a1"})
                for _ in range(8)
            )
        )
        assert sorted(r.status_code for r in replies) == [200] * 7 + [201], [
            r.text for r in replies
        ]
        assert len({r.json()["id"] for r in replies}) == 1
        listed = (await c.get("workloads", params={"limit": 100})).json()["items"]
        assert len(listed) == 4


async def test_less_cpu_than_the_kernel_can_share_is_refused(service: Service) -> None:
    async with service.admin() as c:
        for cpus in (0.0004, 0.005):
            body = {
                "pool": "workstation",
                "account": "lab-a",
                "command": ["x"],
                "cpus": cpus,
                "memory": "1G",
            }
            assert "a workload needs at least 0.01 of a CPU" in problem(
                await c.post("workloads", json=body), 422
            )


@pytest.mark.parametrize(
    "body",
    [
        {"text": "accounts: {}\n", "filename": "\ud800"},
        {"text": "x: " + "{a: " * 5000 + "1" + "}" * 5000},
        {"text": "limits: {pending_per_user: 1" + "0" * 5000 + "}"},
        {
            "text": "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
            + "".join(
                f"{n}: &{n} [{', '.join(['*' + p] * 10)}]\n"
                for p, n in zip("abcdefgh", "bcdefghi", strict=True)
            )
        },
    ],
    ids=["surrogate-filename", "deep", "long-integer", "alias-bomb"],
)
async def test_a_hostile_policy_gets_a_clear_error_not_a_500(
    service: Service, body: dict[str, object]
) -> None:
    # As JSON escapes (json.dumps's default): a lone surrogate cannot be sent as UTF-8.
    raw = json.dumps({**body, "dry_run": True})
    async with service.admin() as c:
        r = await c.put("policy", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text[:500]


async def test_activity_is_reported_for_sessions_only(service: Service) -> None:
    """Review finding: any of the owner's tokens could keep any workload 'in use'."""
    async with service.admin() as c:
        wid = (await c.post("workloads", json=JOB)).json()["id"]
        r = await c.post(
            f"workloads/{wid}/activity", json={"last_activity": "2026-01-01T00:00:00Z"}
        )
    assert "is a job, not a session" in problem(r, 409)
