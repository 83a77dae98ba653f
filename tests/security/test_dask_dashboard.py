"""Only a Dask cluster's owner reaches its dashboard, and nothing of theirs leaks to it.

Against a real dask.distributed scheduler (HTTPS dashboard requiring the cluster's client
certificate) and the service served by uvicorn: another user, the administrator and the hub's
spawner acting for the owner are refused (403, HTTP and WebSocket), no login goes to the hub's
login, a page of another site cannot open the plots' WebSocket, and the scheduler's port
itself refuses a TLS client without the cluster's certificate or with another cluster's (and
another account of the machine, with curl).
A stub scheduler that echoes what it gets shows that the caller's cookies and tokens never
reach it (the user's own code runs there) and that its cookies never reach the browser.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import ssl
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import websockets
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler
from tornado.websocket import WebSocketHandler

from allotment.domain.dask import ClusterState, dashboard_path
from allotment.web.context import SESSION_COOKIE
from allotment.web.oauth import HubOAuthClient
from tests.integration.test_dask_proxy import (
    BASE,
    READ,
    Proxy,
    dashboard_of,
    insert_cluster,
    new_credentials,
    proxy_service,
    running_cluster,
    set_dashboard,
    ws_url,
)
from tests.support.hub import Hub


@pytest.fixture
async def proxy(database_url: str, tmp_path: Path, hub: Hub) -> AsyncIterator[Proxy]:
    async with proxy_service(database_url, tmp_path / "data", hub) as p:
        yield p


async def _ws_status(url: str, headers: dict[str, str]) -> int:
    """The HTTP status a WebSocket handshake is answered with (a refusal's, or 101). By
    hand, since a WebSocket client follows a redirect (to the hub's login) on its own."""
    handshake = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        **headers,
    }
    async with httpx.AsyncClient(trust_env=False, timeout=30) as c:
        r = await c.get("http" + url.removeprefix("ws"), headers=handshake)
    return r.status_code


async def test_only_the_owner_gets_in(proxy: Proxy, hub: Hub, tmp_path: Path) -> None:
    async with running_cluster(proxy, "alice", tmp_path / "dask") as cluster:
        status = cluster.path + "/status"
        async with proxy.client(proxy.cookie(hub.token("bob", READ))) as c:
            r = await c.get(status)
            assert r.status_code == 403
            assert "only its owner" in r.json()["detail"]
            page = await c.get(status, headers={"Accept": "text/html"})
            assert page.status_code == 403 and "only its owner" in page.text
        bob = {"Cookie": f"{SESSION_COOKIE}={proxy.cookie(hub.token('bob', READ))}"}
        assert await _ws_status(ws_url(proxy, status + "/ws"), bob) == 403
        # Not the administrator either, nor the hub's spawner acting for the owner.
        admin = {"Authorization": f"token {proxy.service.admin_token}"}
        async with proxy.client() as c:
            assert (await c.get(status, headers=admin)).status_code == 403
            spawner = {
                "Authorization": f"token {hub.spawner_token}",
                "X-Allotment-User": "alice",
            }
            assert (await c.get(status, headers=spawner)).status_code == 403
            # The owner's API token works for scripts.
            alice = {"Authorization": f"token {hub.token('alice', READ)}"}
            assert (await c.get(status, headers=alice)).status_code == 200


async def test_no_login_goes_to_the_hub(proxy: Proxy, hub: Hub, tmp_path: Path) -> None:
    proxy.service.app.state.dashboard.oauth = HubOAuthClient(
        "service-allotment",
        "secret",
        "/services/allotment/oauth_callback",
        "/hub/api/oauth2/authorize",
        hub.api_url + "/oauth2/token",
    )
    async with running_cluster(proxy, "alice", tmp_path / "dask") as cluster:
        status = cluster.path + "/status"
        async with proxy.client() as c:
            r = await c.get(status, follow_redirects=False)
            assert r.status_code == 302
            assert r.headers["location"].startswith("/hub/api/oauth2/authorize?")
            c.cookies.set(SESSION_COOKIE, proxy.cookie(hub.token("alice", READ))[:-2] + "xx")
            assert (await c.get(status, follow_redirects=False)).status_code == 302
        assert await _ws_status(ws_url(proxy, status + "/ws"), {}) == 302
        revoked = {"Authorization": "token not-a-token"}
        assert await _ws_status(ws_url(proxy, status + "/ws"), revoked) == 302


async def test_clusters_not_running_are_told_apart(proxy: Proxy, hub: Hub) -> None:
    cert, key = new_credentials()
    starting = await insert_cluster(proxy.service, "alice", cert, key, state=ClusterState.STARTING)
    ended = await insert_cluster(
        proxy.service, "alice", cert, key, state=ClusterState.STOPPED, dashboard="https://x:1"
    )
    plain = await insert_cluster(proxy.service, "alice", cert, key, dashboard="http://x:1")
    async with proxy.client(proxy.cookie(hub.token("alice", READ))) as c:
        r = await c.get(dashboard_path(BASE, starting) + "/status")
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        assert "starting" in r.json()["detail"]
        r = await c.get(dashboard_path(BASE, ended) + "/status")
        assert r.status_code == 404 and "stopped" in r.json()["detail"]
        r = await c.get(dashboard_path(BASE, plain) + "/status")
        assert r.status_code == 502 and "https://" in r.json()["detail"]
        assert (await c.get(dashboard_path(BASE, 987654) + "/status")).status_code == 404
        assert (await c.get(dashboard_path(BASE, starting) + "x")).status_code == 404


def _client_tls(trusted: str, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=trusted)
    context.check_hostname = False
    if cert is not None and key is not None:
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "c.pem")
            Path(path).write_text(cert + key)
            context.load_cert_chain(path)
    return context


async def test_the_scheduler_port_refuses_clients_without_the_certificate(
    proxy: Proxy, tmp_path: Path
) -> None:
    other_cert, other_key = new_credentials()
    async with running_cluster(proxy, "alice", tmp_path / "dask") as cluster:
        url = dashboard_of(cluster.scheduler) + cluster.path + "/status"
        for context in (
            _client_tls(cluster.cert),  # no certificate
            _client_tls(cluster.cert, other_cert, other_key),  # another cluster's
        ):
            async with httpx.AsyncClient(verify=context, trust_env=False) as c:
                with pytest.raises(
                    (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)
                ):
                    await c.get(url)
        good = _client_tls(cluster.cert, cluster.cert, cluster.key)
        async with httpx.AsyncClient(verify=good, trust_env=False) as c:
            assert (await c.get(url)).status_code == 200
        # Another account of the machine, with the usual tool and no certificate, gets nothing.
        if os.geteuid() == 0 and shutil.which("curl"):
            tried = await asyncio.to_thread(
                subprocess.run,
                ["runuser", "-u", "nobody", "--", "curl", "-sk", "--max-time", "20", url],
                capture_output=True,
                text=True,
            )
            # 35/55/56: refused in or right after the TLS handshake (not 7: it connected).
            assert tried.returncode in (35, 55, 56) and "Bokeh" not in tried.stdout, tried


class _Echo(RequestHandler):
    """What a scheduler would see of a request, and a cookie and a hop header it sets."""

    def get(self) -> None:
        self.set_header("Set-Cookie", f"{SESSION_COOKIE}=stolen; Path=/")
        self.set_header("Connection", "X-Secret-Hop")
        self.set_header("X-Secret-Hop", "1")
        self.set_header("X-Kept", "1")
        self.write({"headers": dict(self.request.headers), "path": self.request.uri})


class _EchoSocket(WebSocketHandler):
    def open(self) -> None:
        self.write_message(json.dumps({"headers": dict(self.request.headers)}))


@contextlib.asynccontextmanager
async def _stub_scheduler(cert: str, key: str, prefix: str) -> AsyncIterator[str]:
    """An HTTPS server requiring the cluster's client certificate that echoes what it gets:
    a stand-in for the scheduler, only to see what the proxy forwards."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cadata=cert)
    with tempfile.TemporaryDirectory() as d:
        Path(d, "c.pem").write_text(cert + key)
        context.load_cert_chain(os.path.join(d, "c.pem"))
    context.verify_mode = ssl.CERT_REQUIRED
    app = Application([(prefix + "/echo/ws", _EchoSocket), (prefix + "/echo.*", _Echo)])
    server = HTTPServer(app, ssl_options=context)
    sockets = bind_sockets(0, "127.0.0.1")
    server.add_sockets(sockets)
    try:
        yield f"https://127.0.0.1:{sockets[0].getsockname()[1]}"
    finally:
        server.stop()
        await server.close_all_connections()


async def test_nothing_of_the_caller_reaches_the_scheduler(proxy: Proxy, hub: Hub) -> None:
    cert, key = new_credentials()
    cluster = await insert_cluster(proxy.service, "alice", cert, key)
    prefix = dashboard_path(BASE, cluster)
    token = hub.token("alice", READ)
    async with _stub_scheduler(cert, key, prefix) as dashboard:
        await set_dashboard(proxy.service, cluster, dashboard)
        async with proxy.client(proxy.cookie(token)) as c:
            r = await c.get(
                prefix + "/echo%2Fraw?x=1&y=%20",
                headers={"Authorization": f"token {token}", "X-Forwarded-For": "1.2.3.4"},
            )
        assert r.status_code == 200, r.text
        seen = {k.lower(): v for k, v in r.json()["headers"].items()}
        assert "cookie" not in seen and "authorization" not in seen
        assert "x-forwarded-for" not in seen
        assert token not in json.dumps(r.json())
        assert r.json()["path"] == prefix + "/echo%2Fraw?x=1&y=%20"  # unchanged
        async with proxy.client(proxy.cookie(token)) as c:
            # (httpx tidies written dot segments itself: the encoded ones reach the service.)
            for climbing in ("/echo/%2e%2e/echo", "/echo/..%2Fx", "/echo/%2E/echo"):
                climbed = await c.get(prefix + climbing)
                assert climbed.status_code == 404, climbing  # a tidying cache could misfile it
        assert "set-cookie" not in r.headers and "x-secret-hop" not in r.headers
        assert r.headers["x-kept"] == "1"

        cookie = proxy.cookie(token)
        async with websockets.connect(
            ws_url(proxy, prefix + "/echo/ws"),
            additional_headers={"Cookie": f"{SESSION_COOKIE}={cookie}", "Origin": proxy.url},
            proxy=None,
        ) as ws:
            seen = {k.lower(): v for k, v in json.loads(await ws.recv())["headers"].items()}
        assert "cookie" not in seen and "authorization" not in seen and "origin" not in seen
        # A page of another site, with the owner's cookie, cannot open it.
        evil = {"Cookie": f"{SESSION_COOKIE}={cookie}", "Origin": "http://evil.example"}
        assert await _ws_status(ws_url(proxy, prefix + "/echo/ws"), evil) == 403
