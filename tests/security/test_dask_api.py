# mypy: disable-error-code="no-untyped-call"
"""A Dask cluster is its owner's alone, against a real JupyterHub: nobody else sees, scales,
stops or connects to it (404: managers and administrators included), a token that may only
read changes nothing and gets no key, its scheduler's reports take its own token and no hub
token, and its key and token appear in no answer but the owner's credentials and in no log.
The credentials are real: a scheduler serving them over TLS lets in a client that holds them
and refuses, at the handshake, one that holds another cluster's.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import dask.config
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from distributed import Client, Scheduler
from distributed.security import Security
from sqlalchemy import select

from allotment.db.engine import Database
from allotment.db.tables import Workload
from tests.support.hub import Hub
from tests.support.service import Service

pytestmark = pytest.mark.jupyterhub

VERSIONS = {"python": "3.11.7", "dask": "2026.8.0", "distributed": "2026.8.0"}


def body(**extra: Any) -> dict[str, Any]:
    return {
        "name": "era5",
        "account": "lab-a",
        "profile": "small",
        "python": sys.executable,
        "versions": VERSIONS,
        **extra,
    }


async def token_of(service: Service, cluster_id: int) -> str:
    db: Database = service.app.state.allotment.db
    async with db.read() as s:
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


async def make(service: Service, token: str, **extra: Any) -> dict[str, Any]:
    async with service.client(token) as c:
        r = await c.post("dask/clusters", json=body(**extra))
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


async def test_another_users_cluster_does_not_exist_for_them(
    hub_service: Service, hub: Hub
) -> None:
    made = await make(hub_service, hub.token("bob"))
    # carol: a member of the same account; alice: its manager; hubadmin: an administrator.
    for user in ("carol", "alice", "hubadmin"):
        async with hub_service.client(hub.token(user)) as c:
            for method, path, json in (
                ("GET", "dask/clusters/era5", None),
                ("GET", "dask/clusters/era5/credentials", None),
                ("POST", "dask/clusters/era5/scale", {"workers": 3}),
                ("POST", "dask/clusters/era5/adapt", {"maximum": 3}),
                ("POST", "dask/clusters/era5/stop", None),
                ("POST", "dask/clusters/era5/heartbeat", None),
            ):
                r = await c.request(method, path, json=json)
                assert r.status_code == 404, (user, path, r.text)
                assert "You have no Dask cluster called 'era5'" in r.json()["detail"]
                assert "bob" not in r.text
            assert (await c.get("dask/clusters", params={"ended": True})).json() == []
            # Their own cluster of the same name is theirs, and bob's is untouched.
            mine = await make(hub_service, hub.token(user))
            assert mine["id"] != made["id"] and mine["user"] == user
    async with hub_service.client(hub.token("bob")) as c:
        got = (await c.get("dask/clusters/era5")).json()
        assert (got["id"], got["state"], got["workers"]) == (made["id"], "starting", 0)
        # Only an administrator lists another user's.
        r = await c.get("dask/clusters", params={"user": "carol"})
        assert r.status_code == 403 and "Only administrators" in r.json()["detail"]
    async with hub_service.client(hub.token("hubadmin")) as c:
        listed = (await c.get("dask/clusters", params={"user": "bob"})).json()
        assert [x["id"] for x in listed] == [made["id"]]
        assert (await c.get("dask/clusters", params={"user": "nobody"})).json() == []


async def test_a_read_only_token_changes_nothing_and_gets_no_key(
    hub_service: Service, hub: Hub
) -> None:
    await make(hub_service, hub.token("bob"))
    reader = hub.token("bob", ["custom:allotment:read"])
    async with hub_service.client(reader) as c:
        r = await c.post("dask/clusters", json=body(name="other"))
        assert r.status_code == 403 and "custom:allotment:submit" in r.json()["detail"]
        for method, path, json in (
            ("GET", "dask/clusters/era5/credentials", None),
            ("POST", "dask/clusters/era5/scale", {"workers": 3}),
            ("POST", "dask/clusters/era5/adapt", {"maximum": 3}),
            ("POST", "dask/clusters/era5/stop", None),
            ("POST", "dask/clusters/era5/heartbeat", None),
        ):
            r = await c.request(method, path, json=json)
            assert r.status_code == 403, (path, r.text)
        got = await c.get("dask/clusters/era5")
        assert got.status_code == 200 and got.json()["state"] == "starting"
        assert got.json()["workers"] == 0


async def test_a_cluster_belongs_only_to_its_owners_running_session(
    hub_service: Service, hub: Hub
) -> None:
    async with hub_service.client(hub.spawner_token) as spawner:
        r = await spawner.post(
            "workloads",
            headers={"X-Allotment-User": "bob"},
            json={"kind": "session", "profile": "small", "command": ["sleep", "1"]},
        )
        assert r.status_code == 201, r.text
    session = int(r.json()["id"])
    async with hub_service.client(hub.token("carol")) as c:
        r = await c.post("dask/clusters", json=body(session=session))
        assert r.status_code == 404 and f"no running session {session}" in r.json()["detail"]
    made = await make(hub_service, hub.token("bob"), session=session)
    assert made["session"] == session
    async with hub_service.client(hub.token("bob")) as c:
        assert (await c.post(f"workloads/{session}/cancel")).status_code == 200
        r = await c.post("dask/clusters", json=body(name="later", session=session))
        assert r.status_code == 404 and f"no running session {session}" in r.json()["detail"]


async def test_the_report_takes_the_clusters_token_and_no_hub_token(
    hub_service: Service, hub: Hub
) -> None:
    made = await make(hub_service, hub.token("bob"))
    report = {"address": "tls://127.0.0.1:40001", "versions": VERSIONS}
    for token in (hub.token("bob"), hub.token("hubadmin"), hub_service.admin_token):
        async with hub_service.client(token) as c:
            r = await c.post("dask/report", json=report)
        assert r.status_code == 401, r.text
    # Another cluster's token reports for that cluster only.
    other = await make(hub_service, hub.token("carol"))
    async with hub_service.client(await token_of(hub_service, other["id"])) as c:
        assert (await c.post("dask/report", json=report)).status_code == 200
    async with hub_service.client(hub.token("bob")) as c:
        assert (await c.get("dask/clusters/era5")).json()["state"] == "starting"
    async with hub_service.client(hub.token("carol")) as c:
        assert (await c.get("dask/clusters/era5")).json()["state"] == "running"
    assert made["id"] != other["id"]


async def test_the_key_and_token_are_only_in_the_owners_credentials(
    hub_service: Service, hub: Hub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    bob = hub.token("bob")
    made = await make(hub_service, bob)
    token = await token_of(hub_service, made["id"])
    seen: list[str] = []
    async with hub_service.client(bob) as c:
        r = await c.get("dask/clusters/era5/credentials")
        assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
        creds = r.json()
        key = creds["tls_key"]
        assert key.startswith("-----BEGIN PRIVATE KEY-----")
        for path in (
            "dask/clusters",
            "dask/clusters/era5",
            f"workloads/{made['scheduler']}",
            "workloads",
            "workloads?kind=dask-scheduler",
        ):
            r = await c.get(path)
            assert r.status_code == 200, r.text
            seen.append(r.text)
        seen.append((await c.post("dask/clusters/era5/heartbeat")).text)
        seen.append((await c.post("dask/clusters/era5/scale", json={"workers": 1})).text)
    async with hub_service.client(token) as c:
        seen.append((await c.post("dask/report", json={"address": "tls://127.0.0.1:1"})).text)
    async with hub_service.client(hub.token("carol")) as c:
        seen.append((await c.get("dask/clusters/era5/credentials")).text)
    async with hub_service.admin() as c:
        seen.append((await c.get(f"workloads/{made['scheduler']}")).text)
        seen.append((await c.get("workloads", params={"user": "bob"})).text)
    # The scheduler's command line (which `ps` shows everyone) carries neither.
    async with hub_service.admin() as c:
        scheduler = (await c.get(f"workloads/{made['scheduler']}")).json()
    assert scheduler["command"] and "env" not in scheduler
    seen.append(" ".join(scheduler["command"]))
    key_body = "".join(key.splitlines()[1:-1])
    # aiosqlite logs every statement with its parameters at DEBUG, the secrets too (as it
    # does every workload's environment); the service runs at INFO unless told otherwise.
    logs = "\n".join(r.getMessage() for r in caplog.records if r.name != "aiosqlite")
    for text in [*seen, logs]:
        assert key_body[:40] not in text.replace("\\n", "")
        assert token not in text
        assert token.removeprefix("allot_dask_") not in text


async def test_the_credentials_admit_their_clusters_clients_only(
    hub_service: Service, hub: Hub
) -> None:
    """A real scheduler over mutual TLS with cluster A's credentials: A's owner connects;
    a client with cluster B's (another user's) is refused at the handshake."""
    await make(hub_service, hub.token("bob"))
    await make(hub_service, hub.token("carol"))
    creds = {}
    for user in ("bob", "carol"):
        async with hub_service.client(hub.token(user)) as c:
            creds[user] = (await c.get("dask/clusters/era5/credentials")).json()
    # What the scheduler program makes of them (allotment/dask/remote): the cluster's one
    # certificate as CA and as every role's.
    cert = x509.load_pem_x509_certificate(creds["bob"]["tls_cert"].encode())
    key = serialization.load_pem_private_key(creds["bob"]["tls_key"].encode(), None)
    assert cert.public_key() == key.public_key()
    assert cert.subject.rfc4514_string() == "CN=dask-internal"
    assert creds["bob"]["tls_cert"] != creds["carol"]["tls_cert"]

    def security(c: dict[str, Any]) -> Security:
        return Security(
            require_encryption=True,
            tls_ca_file=c["tls_cert"],
            tls_client_cert=c["tls_cert"],
            tls_client_key=c["tls_key"],
            tls_scheduler_cert=c["tls_cert"],
            tls_scheduler_key=c["tls_key"],
            tls_worker_cert=c["tls_cert"],
            tls_worker_key=c["tls_key"],
        )

    with dask.config.set({"distributed.comm.timeouts.connect": "3s"}):
        async with Scheduler(
            security=security(creds["bob"]), host="127.0.0.1", port=0, dashboard=False
        ) as s:
            assert s.address.startswith("tls://")
            async with Client(
                s.address, security=security(creds["bob"]), asynchronous=True, timeout=10
            ) as client:
                info = await client.scheduler.identity()
                assert info["address"] == s.address
            with pytest.raises((OSError, TimeoutError)):
                async with Client(
                    s.address, security=security(creds["carol"]), asynchronous=True, timeout=3
                ):
                    pass
