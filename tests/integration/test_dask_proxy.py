"""A Dask cluster's dashboard through the service, for its owner: a real dask.distributed
scheduler started here, serving its dashboard over HTTPS that requires the cluster's own
client certificate under the proxied prefix, and the service (served by uvicorn, so
WebSockets are real) logged into with the dashboard's signed login cookie holding a real hub
token. The owner gets /status and Bokeh's assets, the plots' WebSocket answers Bokeh's
protocol both ways, Chromium renders a plot through it, and a scheduler that has gone is a
clear 502. Refusals (other users, no login, other sites, the scheduler's own port) are in
tests/security/test_dask_dashboard.py.

The helpers here are shared with that file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dask
import httpx
import pytest
import uvicorn
import websockets
from distributed import Scheduler, Security
from fastapi import FastAPI
from sqlalchemy import select

from allotment.api.dask_credentials import new_cluster_secrets
from allotment.db.tables import Account, DaskCluster, Pool, Profile, User, Workload
from allotment.domain.dask import ClusterState, dashboard_path
from allotment.domain.dask_commands import scheduler_launch
from allotment.domain.workloads import WorkloadState
from allotment.web.context import SESSION_COOKIE
from tests.support.hub import Hub
from tests.support.hubup import CHROMIUM, CHROMIUM_ARGS
from tests.support.service import Service, running_service

POLICY = """
accounts:
  lab-a: {members: [alice, bob]}
pools:
  box:
    nodes: [{name: n1, cpus: 8, memory: 16G}]
    rates: {cpu: 1.0}
profiles:
  small: {pool: box, size: {cpus: 1, memory: 1G}}
"""
BASE = "/services/allotment/"
READ = ["custom:allotment:read"]


@dataclass
class Proxy:
    """The service on a real port, and how to log into its dashboard."""

    service: Service
    url: str

    def cookie(self, token: str) -> str:
        """The dashboard's login cookie for a hub token, as the OAuth callback sets it."""
        signed = self.service.app.state.dashboard.signer.sign(
            "session", {"token": token, "at": time.time()}
        )
        return str(signed)

    def client(self, cookie: str | None = None) -> httpx.AsyncClient:
        cookies = {SESSION_COOKIE: cookie} if cookie else None
        return httpx.AsyncClient(base_url=self.url, cookies=cookies, trust_env=False, timeout=30)


@contextlib.asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[str]:
    """``app`` (its lifespan already entered) served by uvicorn on a free loopback port."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def proxy_service(database_url: str, data: Path, hub: Hub) -> AsyncIterator[Proxy]:
    async with running_service(
        database_url, data, policy_text=POLICY, hub_api_url=hub.api_url
    ) as service:
        async with served(service.app) as url:
            yield Proxy(service, url)


def new_credentials() -> tuple[str, str]:
    """A cluster's certificate (its own CA, CN dask-internal) and key, made by the API's own
    maker."""
    secrets = new_cluster_secrets()
    return secrets.tls_cert, secrets.tls_key


async def insert_cluster(
    service: Service,
    user: str,
    cert: str,
    key: str,
    *,
    state: ClusterState = ClusterState.RUNNING,
    dashboard: str | None = None,
    name: str | None = None,
    workers: int = 0,
    ended_at: datetime | None = None,
    token_sha256: str | None = None,
) -> int:
    """A cluster row, as the API and the scheduler's first report would leave it."""
    now = datetime.now(UTC)
    async with service.app.state.allotment.db.write() as session:
        user_id = (await session.execute(select(User.id).where(User.name == user))).scalar_one()
        account = (
            await session.execute(select(Account.id).where(Account.path == "lab-a"))
        ).scalar_one()
        profile = (
            await session.execute(select(Profile.id).where(Profile.name == "small"))
        ).scalar_one()
        row = DaskCluster(
            name=name or f"era5-{time.monotonic_ns()}",
            user_id=user_id,
            account_id=account,
            profile_id=profile,
            state=int(state),
            reason="",
            worker={"cpus": 1, "memory": 2**30, "gpus": 0, "threads": 1},
            python="/usr/bin/python3",
            versions={},
            workers=workers,
            tls_cert=cert,
            tls_key=key,
            token_sha256=token_sha256 or f"{time.monotonic_ns():064x}",
            dashboard=dashboard,
            created_at=now,
            updated_at=now,
            ended_at=ended_at,
        )
        session.add(row)
        await session.flush()
        return int(row.id)


async def set_dashboard(service: Service, cluster_id: int, dashboard: str) -> None:
    async with service.app.state.allotment.db.write() as session:
        row = await session.get(DaskCluster, cluster_id)
        assert row is not None
        row.dashboard = dashboard


@contextlib.asynccontextmanager
async def dask_scheduler(cert: str, key: str, prefix: str, tmp: Path) -> AsyncIterator[Scheduler]:
    """A real scheduler: comms over mutual TLS, its dashboard over HTTPS requiring the
    cluster's client certificate, under ``prefix`` (what the scheduler program does)."""
    tmp.mkdir(mode=0o700, exist_ok=True)
    (tmp / "cert.pem").write_text(cert)
    (tmp / "key.pem").write_text(key)
    security = Security(  # type: ignore[no-untyped-call]
        require_encryption=True,
        tls_ca_file=cert,
        tls_scheduler_cert=cert,
        tls_scheduler_key=key,
        tls_client_cert=cert,
        tls_client_key=key,
    )
    with dask.config.set(
        {
            "distributed.scheduler.dashboard.tls.cert": str(tmp / "cert.pem"),
            "distributed.scheduler.dashboard.tls.key": str(tmp / "key.pem"),
            "distributed.scheduler.dashboard.tls.ca-file": str(tmp / "cert.pem"),
        }
    ):
        scheduler = Scheduler(
            security=security,
            protocol="tls",
            host="127.0.0.1",
            dashboard=True,
            dashboard_address="127.0.0.1:0",
            http_prefix=prefix,
        )
    # Before the loop runs again, so no connection is ever accepted without the certificate.
    tls = scheduler.http_server.ssl_options
    assert isinstance(tls, ssl.SSLContext)
    tls.verify_mode = ssl.CERT_REQUIRED
    async with scheduler:
        yield scheduler


def dashboard_of(scheduler: Scheduler) -> str:
    return f"https://127.0.0.1:{scheduler.http_server.port}"  # type: ignore[attr-defined]


@dataclass
class RunningCluster:
    id: int
    scheduler: Scheduler
    cert: str
    key: str

    @property
    def path(self) -> str:
        return dashboard_path(BASE, self.id)


@contextlib.asynccontextmanager
async def running_cluster(proxy: Proxy, user: str, tmp: Path) -> AsyncIterator[RunningCluster]:
    cert, key = new_credentials()
    cluster_id = await insert_cluster(proxy.service, user, cert, key)
    async with dask_scheduler(cert, key, dashboard_path(BASE, cluster_id), tmp) as scheduler:
        await set_dashboard(proxy.service, cluster_id, dashboard_of(scheduler))
        yield RunningCluster(cluster_id, scheduler, cert, key)


def ws_url(proxy: Proxy, path: str) -> str:
    return "ws" + proxy.url.removeprefix("http") + path


def bokeh_token(html: str) -> str:
    """The Bokeh session token a server page carries for its WebSocket."""
    found = re.search(r'"token"\s*:\s*"([^"]+)"', html) or re.search(
        r'\\"token\\"\s*:\s*\\"([^"\\]+)\\"', html
    )
    assert found, "the page is a Bokeh server page"
    return found.group(1)


@pytest.fixture
async def proxy(database_url: str, tmp_path: Path, hub: Hub) -> AsyncIterator[Proxy]:
    async with proxy_service(database_url, tmp_path / "data", hub) as p:
        yield p


@pytest.fixture
async def proxy_once(tmp_path: Path, hub: Hub) -> AsyncIterator[Proxy]:
    """On SQLite alone: for what does not depend on the database (a browser, a program)."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'db' / 'allotment.sqlite'}"
    async with proxy_service(url, tmp_path / "data", hub) as p:
        yield p


async def test_owner_gets_status_its_assets_and_live_plots(
    proxy: Proxy, hub: Hub, tmp_path: Path
) -> None:
    async with running_cluster(proxy, "alice", tmp_path / "dask") as cluster:
        cookie = proxy.cookie(hub.token("alice", READ))
        async with proxy.client(cookie) as c:
            me = await c.get(BASE + "dashboard/")
            link = re.search(r'<a href="([^"]+)"[^>]*>open</a>', me.text)
            assert link, "the Me page links the cluster's dashboard"
            page = await c.get(link.group(1))
            assert page.url.path == cluster.path + "/status"
            assert page.status_code == 200, page.text
            assert page.headers["content-type"].startswith("text/html")
            assert "Bokeh" in page.text
            scripts = re.findall(r'<script[^>]+src="([^"]+)"', page.text)
            assert scripts, "the page loads Bokeh's scripts"
            asset = await c.get(httpx.URL(page.url).join(scripts[0]))
            assert asset.status_code == 200 and len(asset.content) > 1000
            # What the JupyterLab Dask extension reads (from the browser, with the cookie).
            plots = await c.get(cluster.path + "/individual-plots.json")
            assert plots.status_code == 200
            # Its plots' addresses are under the dashboard's, which it joins them to.
            plot = next(u for u in plots.json().values() if u.startswith("/individual-"))
            assert (await c.get(cluster.path + plot)).status_code == 200
            # The scheduler's own redirect from the prefix stays on the service.
            bare = await c.get(cluster.path + "/", follow_redirects=False)
            assert bare.status_code in (301, 302)
            assert not bare.headers["location"].startswith("https://")

        token = bokeh_token(page.text)
        async with websockets.connect(
            ws_url(proxy, cluster.path + "/status/ws"),
            subprotocols=["bokeh", token],  # type: ignore[list-item]
            additional_headers={"Cookie": f"{SESSION_COOKIE}={cookie}"},
            proxy=None,
            max_size=None,
        ) as ws:
            assert ws.subprotocol == "bokeh"
            ack = json.loads(await asyncio.wait_for(ws.recv(), 30))
            assert ack["msgtype"] == "ACK"
            await ws.recv()  # metadata
            await ws.recv()  # content
            for part in ({"msgid": "q1", "msgtype": "PULL-DOC-REQ"}, {}, {}):
                await ws.send(json.dumps(part))
            while True:  # the server may push patches first
                header = json.loads(await asyncio.wait_for(ws.recv(), 30))
                await ws.recv()
                content = json.loads(await ws.recv())
                for _ in range(header.get("num_buffers", 0)):
                    await ws.recv()
                if header["msgtype"] == "PULL-DOC-REPLY":
                    break
            assert header["reqid"] == "q1"
            assert content["doc"]["roots"], "the document holds the status page's plots"


async def test_chromium_renders_a_plot(proxy_once: Proxy, hub: Hub, tmp_path: Path) -> None:
    proxy = proxy_once
    if not Path(CHROMIUM).exists():
        pytest.skip("needs Debian's chromium (scripts/test installs it)")
    from playwright.async_api import async_playwright

    async with running_cluster(proxy, "alice", tmp_path / "dask") as cluster:
        cookie = proxy.cookie(hub.token("alice", READ))
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                context = await browser.new_context()
                await context.add_cookies(
                    [{"name": SESSION_COOKIE, "value": cookie, "url": proxy.url + BASE}]
                )
                page = await context.new_page()
                sockets: list[str] = []
                page.on("websocket", lambda ws: sockets.append(ws.url))
                await page.goto(proxy.url + cluster.path + "/status")
                # Bokeh draws only once the document came over the WebSocket.
                await page.locator("canvas").first.wait_for(state="attached", timeout=60_000)
                assert any(u.endswith(cluster.path + "/status/ws") or "/status/ws?" in u
                           for u in sockets), sockets  # fmt: skip
            finally:
                await browser.close()


async def test_a_scheduler_that_has_gone_is_a_clear_502(
    proxy: Proxy, hub: Hub, tmp_path: Path
) -> None:
    async with running_cluster(proxy, "alice", tmp_path / "dask") as cluster:
        pass  # the scheduler has stopped; the row still names its dashboard
    cookie = proxy.cookie(hub.token("alice", READ))
    async with proxy.client(cookie) as c:
        r = await c.get(cluster.path + "/status")
    assert r.status_code == 502
    assert r.headers["content-type"] == "application/problem+json"
    assert "did not answer" in r.json()["detail"]


async def test_me_page_lists_ones_own_clusters(proxy: Proxy, hub: Hub) -> None:
    cert, key = new_credentials()
    now = proxy.service.clock.now()  # what the page compares with
    running = await insert_cluster(
        proxy.service, "alice", cert, key, name="era5", workers=2, dashboard="https://h:1"
    )
    await insert_cluster(
        proxy.service, "alice", cert, key, name="fresh", state=ClusterState.STARTING
    )
    await insert_cluster(
        proxy.service,
        "alice",
        cert,
        key,
        name="idle",
        state=ClusterState.STOPPED,
        dashboard="https://h:2",
        ended_at=now - timedelta(hours=2),
    )
    await insert_cluster(
        proxy.service,
        "alice",
        cert,
        key,
        name="last-week",
        state=ClusterState.STOPPED,
        ended_at=now - timedelta(days=7),
    )
    async with proxy.service.app.state.allotment.db.write() as session:
        cluster = await session.get(DaskCluster, running)
        assert cluster is not None
        for status in (WorkloadState.RUNNING, WorkloadState.PENDING):
            session.add(
                Workload(
                    kind="dask-worker",
                    name="era5-worker",
                    user_id=cluster.user_id,
                    account_id=cluster.account_id,
                    pool_id=(await session.execute(select(Pool.id))).scalar_one(),
                    millicpus=1000,
                    memory=2**30,
                    gpus={},
                    target=int(WorkloadState.RUNNING),
                    status=int(status),
                    cluster_id=running,
                    created_at=now,
                    updated_at=now,
                )
            )
    async with proxy.client(proxy.cookie(hub.token("alice", READ))) as c:
        page = (await c.get(BASE + "dashboard/")).text
    start = page.index("<tbody>", page.index('id="dask-clusters"'))
    rows = re.findall(r"<tr>(.*?)</tr>", page[start : page.index("</tbody>", start)], re.S)
    names = [re.findall(r'class="name">([^<]+)<', r) for r in rows]
    assert names == [["idle"], ["fresh"], ["era5"]]  # newest first; last week's is gone
    idle, fresh, era5 = rows
    assert "1 / 2" in era5 and f'href="{dashboard_path(BASE, running)}/status"' in era5
    assert "starting" in fresh and "href" not in fresh  # no dashboard yet
    assert "stopped" in idle and "href" not in idle  # its dashboard ended with it
    async with proxy.client(proxy.cookie(hub.token("bob", READ))) as c:
        assert "dask-clusters" not in (await c.get(BASE + "dashboard/")).text


async def test_the_scheduler_program_reports_and_its_owner_opens_its_dashboard(
    proxy_once: Proxy, hub: Hub, tmp_path: Path
) -> None:
    """The contract end to end: the real scheduler program (its command and environment as
    the service builds them) reports its dashboard to the service's report endpoint, and the
    owner then opens it through the proxy."""
    proxy = proxy_once
    made = new_cluster_secrets()
    cluster_id = await insert_cluster(
        proxy.service,
        "alice",
        made.tls_cert,
        made.tls_key,
        state=ClusterState.STARTING,
        token_sha256=made.token_sha256,
    )
    path = dashboard_path(BASE, cluster_id)
    launch = scheduler_launch(
        cluster_id=cluster_id, name="era5", python=sys.executable,
        service_url=proxy.url + BASE, token=made.token, tls_cert=made.tls_cert,
        tls_key=made.tls_key, dashboard_prefix=path,
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    log = open(tmp_path / "scheduler.log", "wb")  # noqa: SIM115
    program = subprocess.Popen(
        launch.command, env={**env, **launch.env}, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        async with proxy.client(proxy.cookie(hub.token("alice", READ))) as c:
            for _ in range(600):  # until its first report (the cluster runs)
                r = await c.get(path + "/status")
                if r.status_code != 503:
                    break
                assert program.poll() is None, (tmp_path / "scheduler.log").read_text()
                await asyncio.sleep(0.1)
            assert r.status_code == 200, r.text
            assert "Bokeh" in r.text
    finally:
        program.terminate()
        program.wait(30)
        log.close()
