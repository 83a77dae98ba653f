# distributed's Security and Client carry no annotations.
# mypy: disable-error-code="no-untyped-call"
"""AllotmentCluster's own logic, against a stub of the service's Dask endpoints and a real
``distributed`` scheduler (with a worker) over mutual TLS standing in for the cluster's.

The stub (``StubDaskApi``) answers as contracts.md §2 and §6 say the API does, over real HTTP,
so that the cluster's blocking and asynchronous paths, its heartbeat thread and the CLI run as
they will against the service; L6's end-to-end tests run them against the real one.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import dask.array as da
import httpx
import pytest
from distributed import Client, Scheduler, Worker
from distributed.security import Security

import allotment.dask.cluster as cluster_module
from allotment.client import AllotmentClient, ApiError
from allotment.dask import AllotmentCluster, ClusterFailed
from allotment.dask.display import summary
from allotment.schemas import DaskClusterCreate, DaskClusterOut
from tests.support.hub import free_port
from tests.support.process import allot_serve, clean_env

TOKEN = "stub-token-of-alice"
PREFIX = "/services/allotment/api/"


class StubDaskApi:
    """A stub of api/routes/dask.py (L1's, contracts.md): clusters in a dict, every call
    recorded; ``start_as`` says what a new cluster's scheduler does (runs at once, waits in
    the queue, or fails)."""

    def __init__(self, address: str, cert: str, key: str) -> None:
        self.address, self.cert, self.key = address, cert, key
        self.clusters: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str, Any]] = []
        self.start_as = "running"
        self.lock = threading.Lock()
        server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        server.daemon_threads = True
        self.server = server
        self.url = f"http://127.0.0.1:{server.server_port}/services/allotment/"
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def paths(self, method: str) -> list[str]:
        with self.lock:
            return [p for m, p, _ in self.calls if m == method]

    def _new(self, body: dict[str, Any]) -> dict[str, Any]:
        request = DaskClusterCreate.model_validate(body)
        name = request.name or f"dask-{len(self.clusters) + 1}"
        running = self.start_as == "running"
        now = datetime.now(UTC).isoformat()
        return {
            "id": len(self.clusters) + 1,
            "name": name,
            "user": "alice",
            "account": request.account or "physics/lab-a",
            "profile": request.profile or "dask-worker",
            "state": {"running": "running", "queued": "starting"}.get(self.start_as, "failed"),
            "reason": "failed: the scheduler exited with 1" if self.start_as == "fails" else "",
            "worker": {"cpus": request.cpus or 1, "memory": 2**31, "gpus": 0, "threads": 1},
            "workers": request.workers,
            "adapt": request.adapt.model_dump() if request.adapt else None,
            "running": 0,
            "requested": request.workers,
            "waiting_reason": "Account physics/lab-a is using 8 of its 8 CPUs"
            if request.workers
            else None,
            "expected_start": None,
            "scheduler": 7,
            "address": self.address if running else None,
            "dashboard_link": f"/services/allotment/dask/{len(self.clusters) + 1}/dashboard/status",
            "session": request.session,
            "shutdown_on_close": request.shutdown_on_close,
            "cost_per_hour": 0.5,
            "currency": "credits",
            "idle_since": None,
            "created_at": now,
            "ended_at": None,
        }

    def answer(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> Any:
        """(status, JSON) for one call, as the API would answer it."""
        parts = [unquote(p) for p in path.removeprefix(PREFIX).split("/")]
        if parts[:2] != ["dask", "clusters"]:
            if parts[0] == "workloads":
                return 200, _scheduler_workload(int(parts[1]))
            return 404, {"status": 404, "title": "Not Found", "detail": "no such path"}
        if len(parts) == 2 and method == "POST":
            c = self._new(body)
            self.clusters[c["name"]] = c
            return 201, c
        if len(parts) == 2:
            ended = query.get("ended") == ["true"]
            return 200, [c for c in self.clusters.values() if ended or c["ended_at"] is None]
        found = self.clusters.get(parts[2])
        if found is None:
            return 404, {
                "status": 404,
                "title": "Not Found",
                "detail": f"You have no Dask cluster called '{parts[2]}'",
            }
        c, action = found, parts[3] if len(parts) > 3 else ""
        if action == "credentials":
            return 200, {"address": c["address"], "tls_cert": self.cert, "tls_key": self.key}
        if action == "scale":
            c.update(workers=body["workers"], adapt=None, requested=body["workers"])
        elif action == "adapt":
            c.update(adapt=body)
        elif action == "stop" and c["state"] in ("starting", "running"):
            c.update(state="stopping", reason="stopped by alice")
        return 200, c  # heartbeat, and a stop of one already stopping: the cluster as it is

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                url = urlsplit(self.path)
                size = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(size)) if size else None
                if self.headers.get("Authorization") != f"token {TOKEN}":
                    status, data = 403, {"status": 403, "title": "Forbidden", "detail": "no"}
                else:
                    with stub.lock:
                        stub.calls.append((self.command, url.path, body))
                        status, data = stub.answer(
                            self.command, url.path, parse_qs(url.query), body
                        )
                payload = b"" if data is None else json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _serve

        return Handler


def _scheduler_workload(workload: int) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat()
    return {
        "id": workload, "kind": "dask-scheduler", "name": "era5-scheduler", "user": "alice",
        "account": "physics/lab-a", "pool": "workstation", "profile": "dask-worker", "cpus": 1,
        "memory": 2**30, "gpus": {}, "status": "pending", "target": "running",
        "reason": "Account physics/lab-a is using 8 of its 8 CPUs", "command": None,
        "max_runtime": None, "created_at": now, "updated_at": now, "position": 3,
    }  # fmt: skip


class StandIn:
    """A real scheduler with one worker over mutual TLS, on a loop of its own: the stand-in
    for the cluster's own scheduler (no cluster manager watches it but the one tested)."""

    def __init__(self, security: Security | None = None) -> None:
        self.security: Any = security or Security.temporary()
        self.address = ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)
        self._thread.start()
        assert self._ready.wait(60), "the stand-in scheduler did not start"

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with Scheduler(
            protocol="tls", host="127.0.0.1", security=self.security, dashboard_address=None
        ) as s:
            async with Worker(s.address, nthreads=2, security=self.security):
                self.address = s.address
                self._ready.set()
                await self._stop.wait()

    def close(self) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


@pytest.fixture
def scheduler() -> Iterator[StandIn]:
    stand_in = StandIn()
    yield stand_in
    stand_in.close()


@pytest.fixture
def stub(scheduler: StandIn, monkeypatch: pytest.MonkeyPatch) -> Iterator[StubDaskApi]:
    security = scheduler.security
    api = StubDaskApi(scheduler.address, security.tls_ca_file, security.tls_client_key)
    for name in ("ALLOTMENT_TOKEN", "JUPYTERHUB_API_TOKEN", "ALLOT_WORKLOAD_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("JUPYTERHUB_SERVICE_PREFIX", raising=False)
    monkeypatch.setenv("ALLOTMENT_URL", api.url)
    monkeypatch.setenv("ALLOTMENT_TOKEN", TOKEN)
    monkeypatch.setenv("ALLOTMENT_SEARCH_PATH", "")
    yield api
    api.close()


def test_a_cluster_is_asked_for_connected_over_tls_and_computes(stub: StubDaskApi) -> None:
    with AllotmentCluster(
        profile="dask-worker", account="lab-a", name="era5", cpus=2, workers=3
    ) as cluster:
        created = stub.calls[0][2]
        assert stub.calls[0][:2] == ("POST", PREFIX + "dask/clusters")
        assert created["name"] == "era5" and created["workers"] == 3 and created["cpus"] == 2
        assert created["versions"] == cluster_module.versions()
        assert created["python"] and "session" not in created  # made outside a session
        assert cluster.scheduler_address == stub.address
        assert cluster.security is not None and cluster.security.require_encryption
        with Client(cluster) as client:
            x = da.ones((400, 400), chunks=100)
            assert client.compute(x.sum()).result() == 160_000
        assert len(cluster.scheduler_info["workers"]) == 1  # kept current by Cluster's watch
        assert cluster.get_logs(cluster=False, workers=False)["Scheduler"]
        # Waiting workers are "requested", shown with the reason, never an error.
        html = cluster._repr_html_()
        assert "3 requested" in html and "8 of its 8 CPUs" in html
    # Closed with shutdown_on_close: the cluster is stopped.
    assert stub.paths("POST")[-1] == PREFIX + "dask/clusters/era5/stop"
    assert stub.clusters["era5"]["state"] == "stopping"


def test_scale_and_adapt_are_asked_of_the_service(stub: StubDaskApi) -> None:
    with AllotmentCluster(name="grow") as cluster:
        cluster.scale(4)
        assert cluster.info is not None and cluster.info.workers == 4
        assert cluster.adapt(minimum=1, maximum=8) is None  # nothing adaptive runs here
        assert cluster.info.adapt is not None and cluster.info.adapt.maximum == 8
        posts = {p: b for m, p, b in stub.calls if m == "POST"}
        assert posts[PREFIX + "dask/clusters/grow/scale"] == {"workers": 4}
        assert posts[PREFIX + "dask/clusters/grow/adapt"] == {"minimum": 1, "maximum": 8}
        assert cluster._adaptive is None


def test_connect_reattaches_and_close_only_detaches(stub: StubDaskApi) -> None:
    first = AllotmentCluster(name="kept", shutdown_on_close=False)
    first.close()
    assert stub.clusters["kept"]["state"] == "running"  # outlives its notebook
    assert [c.name for c in AllotmentCluster.list()] == ["kept"]
    with AllotmentCluster.connect("kept") as again, Client(again) as client:
        assert client.submit(sum, [1, 2, 3]).result() == 6
    assert stub.clusters["kept"]["state"] == "running"
    assert PREFIX + "dask/clusters/kept/stop" not in stub.paths("POST")
    with pytest.raises(ApiError, match="no Dask cluster called 'gone'"):
        AllotmentCluster.connect("gone")


def test_a_failed_scheduler_is_a_clear_error_and_a_queued_one_times_out_saying_why(
    stub: StubDaskApi,
) -> None:
    stub.start_as = "fails"
    with pytest.raises(ClusterFailed, match="failed: the scheduler exited with 1"):
        AllotmentCluster(name="broken")
    stub.start_as = "queued"
    with pytest.raises(TimeoutError, match=r"position 3 in the queue.*8 of its 8 CPUs"):
        AllotmentCluster(name="waits", timeout=0.5)
    # It was asked for and would outlive the error: it is stopped (shutdown_on_close).
    assert stub.clusters["waits"]["state"] == "stopping"


def test_the_heartbeat_runs_while_the_object_lives(
    stub: StubDaskApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cluster_module, "HEARTBEAT", 0.05)
    with AllotmentCluster(name="beats") as cluster:
        stub.clusters["beats"]["running"] = 1  # what the service says next is shown
        deadline = asyncio.run(_until(lambda: len(_beats(stub, "beats")) >= 2))
        assert deadline, "no heartbeats"
        assert asyncio.run(_until(lambda: cluster.info is not None and cluster.info.running == 1))
    sent = len(_beats(stub, "beats"))
    asyncio.run(asyncio.sleep(0.3))
    assert len(_beats(stub, "beats")) == sent  # none after close


def _beats(stub: StubDaskApi, name: str) -> list[str]:
    return [p for p in stub.paths("POST") if p.endswith(f"/{name}/heartbeat")]


async def _until(check: Any, seconds: float = 10.0) -> bool:
    for _ in range(int(seconds / 0.02)):
        if check():
            return True
        await asyncio.sleep(0.02)
    return False


def test_inside_a_session_the_session_owns_it_and_its_token_is_used(
    stub: StubDaskApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ALLOTMENT_TOKEN")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", TOKEN)
    monkeypatch.setenv("ALLOT_WORKLOAD_ID", "41")
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/alice/")
    with AllotmentCluster(name="mine") as cluster:
        assert stub.calls[0][2]["session"] == 41
        # The browser is on the hub's origin already: the proxied path as it is.
        assert cluster.dashboard_link == "/services/allotment/dask/1/dashboard/status"


def test_outside_a_session_the_link_is_on_the_services_origin(stub: StubDaskApi) -> None:
    with AllotmentCluster(name="out") as cluster:
        origin = stub.url.split("/services/")[0]
        assert cluster.dashboard_link == origin + "/services/allotment/dask/1/dashboard/status"


def test_a_wrong_token_is_refused_before_anything_starts(
    stub: StubDaskApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ApiError, match="no"):
        AllotmentCluster(name="x", token="not-alice")
    assert stub.clusters == {}
    monkeypatch.delenv("ALLOTMENT_TOKEN")
    with pytest.raises(ValueError, match="no Allotment token"):
        AllotmentCluster(name="x")


async def test_asynchronous_clusters_are_awaited(stub: StubDaskApi) -> None:
    async with AllotmentCluster(name="aio", asynchronous=True) as cluster:
        await cluster.scale(2)
        assert cluster.info is not None and cluster.info.workers == 2
        async with Client(cluster, asynchronous=True) as client:
            assert await client.submit(lambda: 42) == 42
    assert stub.clusters["aio"]["state"] == "stopping"


def test_the_client_calls(stub: StubDaskApi) -> None:
    with AllotmentClient(stub.url, TOKEN) as c:
        made = c.create_dask_cluster(
            DaskClusterCreate(name="calls", python="/usr/bin/python3", workers=1)
        )
        assert made.name == "calls" and made.requested == 1
        assert c.dask_cluster("calls").id == made.id
        assert c.dask_credentials("calls").tls_cert == stub.cert
        assert c.scale_dask_cluster("calls", 5).workers == 5
        assert c.adapt_dask_cluster("calls", maximum=9).adapt is not None
        assert c.dask_heartbeat("calls").name == "calls"
        assert c.stop_dask_cluster("calls").reason == "stopped by alice"
        assert [k.name for k in c.dask_clusters()] == ["calls"]


def test_summary_says_what_waits_and_why() -> None:
    info = DaskClusterOut.model_validate(
        StubDaskApi._new(_Bare(), {"python": "/p", "workers": 4, "adapt": {"maximum": 6}})
    )
    lines = dict(summary(info, connected=1))
    assert lines["Workers"] == "1 running of 4 asked for"
    assert lines["Waiting"].startswith("4 requested") and "8 of its 8 CPUs" in lines["Waiting"]
    assert lines["Scaling"] == "adaptive 0-6"
    assert summary(None, 0) == [("State", "asking the service for the cluster")]


class _Bare(StubDaskApi):
    def __init__(self) -> None:
        self.clusters, self.start_as, self.address = {}, "queued", "tls://x:1"


def test_importing_it_loads_nothing_of_the_server() -> None:
    """A notebook's ``import allotment.dask`` needs only the client (and costs no more)."""
    code = (
        "import sys, allotment.dask; print(sorted(m for m in sys.modules if m.startswith("
        "('allotment.api', 'allotment.db', 'allotment.controller', 'allotment.backends', "
        "'sqlalchemy', 'fastapi'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- against the service's own endpoints (api/routes/dask.py), where they exist ----------------


@pytest.mark.skipif(
    importlib.util.find_spec("allotment.api.routes.dask") is None,
    reason="the service's Dask endpoints (api/routes/dask.py) are not there yet",
)
def test_against_the_service_it_waits_connects_with_its_credentials_and_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`allot serve` without a controller: the cluster waits as STARTING (its scheduler is
    queued), the test plays the scheduler with the credentials the service made (and reports
    with the cluster's token, which only its scheduler's environment holds), and the cluster
    connects, computes and is stopped on close."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/services/allotment/"
    with allot_serve(port, clean_env(ALLOTMENT_DATA_DIR=str(tmp_path)), "--no-controller"):
        admin = (tmp_path / "admin-token").read_text().strip()
        for name in ("JUPYTERHUB_API_TOKEN", "ALLOT_WORKLOAD_ID"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("ALLOTMENT_URL", url)
        monkeypatch.setenv("ALLOTMENT_TOKEN", admin)
        with pytest.raises(TimeoutError, match="did not start within 1 s. It is pending"):
            AllotmentCluster(name="late", account="lab-a", profile="small", timeout=1)
        with AllotmentClient(url, admin) as c:
            assert c.dask_cluster("late").state == "stopping"  # not left behind
        made: dict[str, Any] = {}
        thread = threading.Thread(target=_make, args=(made,), daemon=True)
        thread.start()
        with AllotmentClient(url, admin) as c:
            assert asyncio.run(_until(lambda: _exists(c, "real"), 60)), made
            creds = c.dask_credentials("real")
            assert creds.address is None and "BEGIN CERTIFICATE" in creds.tls_cert
            cluster_id = c.dask_cluster("real").id
        stand_in = StandIn(Security(
            require_encryption=True, tls_ca_file=creds.tls_cert,
            tls_scheduler_cert=creds.tls_cert, tls_scheduler_key=creds.tls_key,
            tls_worker_cert=creds.tls_cert, tls_worker_key=creds.tls_key,
            tls_client_cert=creds.tls_cert, tls_client_key=creds.tls_key,
        ))  # fmt: skip
        try:
            token = _cluster_token(tmp_path / "allotment.sqlite", cluster_id)
            r = httpx.post(
                url + "api/dask/report",
                headers={"Authorization": f"token {token}"},
                json={"address": stand_in.address, "versions": cluster_module.versions()},
            )
            assert r.status_code == 200, r.text
            thread.join(60)
            cluster = made["cluster"]
            assert isinstance(cluster, AllotmentCluster), made
            with cluster, Client(cluster) as client:
                assert cluster.scheduler_address == stand_in.address
                assert client.submit(sum, [1, 2, 3]).result() == 6
                assert cluster.dashboard_link == ""  # no dashboard reported
            with AllotmentClient(url, admin) as c:
                assert c.dask_cluster("real").state == "stopping"
                assert c.dask_cluster("real").reason.startswith("stopped by")
        finally:
            stand_in.close()


def _make(made: dict[str, Any]) -> None:
    try:
        made["cluster"] = AllotmentCluster(name="real", account="lab-a", profile="small")
    except Exception as e:  # shown by the test's assertion
        made["error"] = e


def _exists(c: AllotmentClient, name: str) -> bool:
    return any(k.name == name for k in c.dask_clusters())


def _cluster_token(database: Path, cluster_id: int) -> str:
    """The token the service put in the cluster's scheduler's environment (nowhere else)."""
    with sqlite3.connect(database) as db:
        (env,) = db.execute(
            "SELECT env FROM workloads WHERE cluster_id = ? AND kind = 'dask-scheduler'",
            (cluster_id,),
        ).fetchone()
    token: str = json.loads(env)["ALLOT_DASK_TOKEN"]
    return token
