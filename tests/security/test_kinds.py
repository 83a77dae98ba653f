"""A user cannot submit an arbitrary command under another kind's name (security issue 11,
part 6): sessions come only through the hub's spawner, which builds their command; Dask
schedulers and workers are not taken by `POST workloads` at all."""

from __future__ import annotations

import pytest

from tests.support.hub import Hub
from tests.support.service import Service

SESSION = {"kind": "session", "profile": "small", "command": ["python", "-c", "anything"]}


async def test_an_admin_token_cannot_start_a_session(service: Service) -> None:
    async with service.admin() as c:
        r = await c.post("workloads", json={**SESSION, "account": "lab-a"})
        assert r.status_code == 403, r.text
        assert "Sessions are started from JupyterHub" in r.json()["detail"]
        assert (await c.get("workloads")).json()["items"] == []


@pytest.mark.parametrize("kind", ["dask-scheduler", "dask-worker"])
async def test_dask_kinds_have_no_generic_endpoint(service: Service, kind: str) -> None:
    async with service.admin() as c:
        r = await c.post("workloads", json={**SESSION, "kind": kind, "account": "lab-a"})
    assert r.status_code == 422, r.text
    assert f"A {kind} is not submitted through `POST workloads`" in r.json()["detail"]


@pytest.mark.jupyterhub
async def test_only_the_spawner_starts_sessions(hub_service: Service, hub: Hub) -> None:
    async with hub_service.client(hub.token("bob")) as c:
        r = await c.post("workloads", json=SESSION)
        assert r.status_code == 403, r.text
        assert "start one from the hub's home page" in r.json()["detail"]
        # A job with the same command is fine: it runs as what it is.
        assert (await c.post("workloads", json={**SESSION, "kind": "job"})).status_code == 201
    acting = {"X-Allotment-User": "bob"}
    async with hub_service.client(hub.spawner_token) as c:
        r = await c.post("workloads", headers=acting, json=SESSION)
        assert r.status_code == 201, r.text
        assert (r.json()["kind"], r.json()["user"]) == ("session", "bob")
        r = await c.post("workloads", headers=acting, json={**SESSION, "kind": "dask-worker"})
        assert r.status_code == 422, r.text
