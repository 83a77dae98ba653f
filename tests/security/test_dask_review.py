"""What a hostile review of Dask clusters found, held (against a real JupyterHub): a cluster's
reports cannot point the service's proxy at another machine, versions that reach reasons (and
terminals) are plain words, and the hub's spawner, which acts for users to start sessions, gets
no cluster's key. (The controller's side: a scheduler gone quiet, an owner who may no longer
charge the account, and secrets erased once a cluster ends, are in
tests/controller/test_dask_clusters_fast.py.)"""

from __future__ import annotations

import pytest

from tests.security.test_dask_api import body, make, token_of
from tests.support.hub import Hub
from tests.support.service import Service

pytestmark = pytest.mark.jupyterhub


async def test_a_report_cannot_send_the_proxy_to_another_host(
    hub_service: Service, hub: Hub
) -> None:
    made = await make(hub_service, hub.token("bob"))
    token = await token_of(hub_service, made["id"])
    report = {"address": "tls://127.0.0.1:4567", "versions": {"dask": "2026.8.0"}}
    async with hub_service.client(token) as c:
        for elsewhere in ("https://10.1.2.3:22", "https://localhost:8787", "https://127.0.0.1"):
            r = await c.post("dask/report", json={**report, "dashboard": elsewhere})
            assert r.status_code == 422, (elsewhere, r.text)
            assert "its scheduler's own host" in r.json()["detail"]
        r = await c.post("dask/report", json={**report, "address": "tls://127.0.0.1"})
        assert r.status_code == 422 and "tls://host:port" in r.json()["detail"]
        r = await c.post("dask/report", json={**report, "dashboard": "https://127.0.0.1:4568"})
        assert r.status_code == 200, r.text
    async with hub_service.client(hub.token("bob")) as c:
        got = (await c.get("dask/clusters/era5")).json()
        assert got["state"] == "running" and got["dashboard_link"]


async def test_versions_are_plain_words(hub_service: Service, hub: Hub) -> None:
    escape = {"dask": "2026.8.0\x1b]0;pwned\x07"}
    async with hub_service.client(hub.token("bob")) as c:
        r = await c.post("dask/clusters", json=body(versions=escape))
        assert r.status_code == 422, r.text
    made = await make(hub_service, hub.token("bob"))
    token = await token_of(hub_service, made["id"])
    async with hub_service.client(token) as c:
        r = await c.post(
            "dask/report", json={"address": "tls://127.0.0.1:4567", "versions": escape}
        )
        assert r.status_code == 422, r.text


async def test_the_spawner_gets_no_clusters_key(hub_service: Service, hub: Hub) -> None:
    await make(hub_service, hub.token("bob"))
    async with hub_service.client(hub.spawner_token) as spawner:
        r = await spawner.get("dask/clusters/era5/credentials", headers={"X-Allotment-User": "bob"})
    assert r.status_code == 403, r.text
    assert "BEGIN" not in r.text
