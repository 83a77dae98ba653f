"""A Dask cluster's real programs (``allotment/dask/remote``), run by the local backend as a
real POSIX user, exactly as the service launches them (``domain.dask_commands``).

The service's report endpoint is stood in for by a stub (``ReportStub``): a tiny HTTP
receiver that records what the scheduler reports and answers orders. The real endpoint and
the controller that launches these workloads are tested with the API.
"""

from __future__ import annotations

import asyncio
import http.client
import http.server
import itertools
import json
import os
import shutil
import ssl
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from distributed import Client, Security

from allotment.backends.base import LaunchSpec, Placement
from allotment.backends.local.backend import LocalBackend
from allotment.domain.dask import dashboard_path
from allotment.domain.dask_commands import Launch, scheduler_launch, worker_launch
from allotment.domain.resources import Resources
from allotment.schemas import DaskSchedulerOrders, DaskSchedulerReport
from tests.backends.conftest import ROOT, local_backend
from tests.backends.test_contract import ended, started
from tests.support.dask import DaskUnavailable, cluster_ports, dask_environment
from tests.support.process import command_lines

pytestmark = [
    pytest.mark.skipif(not ROOT, reason="needs root: runs as a real POSIX user"),
    # The user's interpreter (Debian's) and the test's may differ in their micro version.
    pytest.mark.filterwarnings("ignore::distributed.versions.VersionMismatchWarning"),
]

USER = "alice"
TOKEN = "allot_dask_" + "t" * 43
CLUSTER = 7
_ids = itertools.count(os.getpid() * 1000 + 700)


@dataclass
class ReportStub:
    """A stand-in for the service's ``api/dask/report``: records reports, answers orders."""

    reports: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    orders: DaskSchedulerOrders = field(
        default_factory=lambda: DaskSchedulerOrders(retire=[], report_every=1)
    )
    invalid: list[str] = field(default_factory=list)
    #: Answer every report with this status instead (0: answer it).
    refuse: int = 0
    server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> str:
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if stub.refuse:
                    self.send_response(stub.refuse)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                stub.reports.append(
                    (self.path + " " + self.headers["Authorization"], json.loads(body))
                )
                # What the service's endpoint takes and answers (its schemas).
                try:
                    DaskSchedulerReport.model_validate(stub.reports[-1][1])
                except ValueError as e:
                    stub.invalid.append(str(e))
                answer = stub.orders.model_dump_json().encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_port}/services/allotment/"

    def stop(self) -> None:
        assert self.server
        self.server.shutdown()
        self.server.server_close()

    async def wait_for(
        self, check: Callable[[dict[str, Any]], bool], seconds: float = 60
    ) -> dict[str, Any]:
        """The first report (from now on) that passes ``check``."""
        start = len(self.reports)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for _, report in self.reports[start:]:
                if check(report):
                    return report
            await asyncio.sleep(0.2)
        raise AssertionError(f"no such report within {seconds} s: {self.reports[-1:]}")


@dataclass
class Cluster:
    backend: LocalBackend
    stub: ReportStub
    cert: str
    key: str
    address: str
    dashboard: str
    scheduler: int
    workers: dict[int, Placement]
    shared: Path

    def security(self) -> Security:
        return client_security(self.cert, self.key)


def credentials() -> tuple[str, str]:
    """A cluster's own self-signed certificate (its own CA) and key, as the service makes."""
    sec = Security.temporary()
    return sec.tls_ca_file, sec.tls_client_key


def client_security(cert: str, key: str) -> Security:
    return Security(
        tls_ca_file=cert, tls_client_cert=cert, tls_client_key=key, require_encryption=True
    )


def spec(wid: int, launch: Launch, kind: str, workdir: Path) -> LaunchSpec:
    return LaunchSpec(
        wid,
        USER,
        "lab",
        launch.command,
        Resources.of(0.5, 1 * 2**30),
        workdir=str(workdir),
        env=launch.env,
        kind=kind,
    )


@pytest.fixture(scope="module")
async def cluster() -> AsyncIterator[Cluster]:
    shared = Path(tempfile.mkdtemp(prefix="allot-dask-", dir="/var/tmp"))
    shared.chmod(0o1777)
    # The interpreter the service would give a notebook's cluster, outside /tmp (a workload
    # has a private /tmp, and the tests' own environment may lie there).
    try:
        python = str(dask_environment())
    except DaskUnavailable as e:
        pytest.skip(str(e))
    backend = local_backend(shared / "state")
    stub = ReportStub()
    url = stub.start()
    cert, key = credentials()
    sid = next(_ids)
    prefix = dashboard_path("/hub/", CLUSTER)
    launch = scheduler_launch(
        cluster_id=CLUSTER, name="demo", python=python, service_url=url, token=TOKEN,
        tls_cert=cert, tls_key=key, dashboard_prefix=prefix,
    )  # fmt: skip
    placements = {sid: (await started(backend, spec(sid, launch, "dask-scheduler", shared)))[-1]}
    try:
        first = await stub.wait_for(lambda r: True)
        workers = {}
        for _ in range(2):
            wid = next(_ids)
            w = worker_launch(
                cluster_id=CLUSTER, name="demo", python=python, address=first["address"],
                tls_cert=cert, tls_key=key, cpus=0.5, memory=2**30, threads=1, gpus=0,
            )  # fmt: skip
            workers[wid] = (await started(backend, spec(wid, w, "dask-worker", shared)))[-1]
            placements[wid] = workers[wid]
        await stub.wait_for(lambda r: sorted(r["workers"]) == sorted(map(str, workers)))
        yield Cluster(
            backend, stub, cert, key, first["address"], first["dashboard"], sid, workers, shared
        )
    finally:
        for wid, p in placements.items():
            await backend.stop(wid, p, grace=10)
        seen = await ended(backend, sid, placements[sid])
        assert seen.exit_code == 0, f"the scheduler stops cleanly on SIGTERM: {seen.reason}"
        for wid in await backend.present():
            await backend.reap(wid)
        await backend.close()
        stub.stop()
        shutil.rmtree(shared, ignore_errors=True)


def tasks() -> tuple[Callable[[str, int], list[int]], Callable[[float], float]]:
    """Task functions the workers can run: defined in a function, so they travel by value (the
    workers cannot import this module)."""

    def count_run(path: str, size: int) -> list[int]:
        with open(path, "a") as f:
            f.write("ran\n")
        return list(range(size))

    def slow(seconds: float) -> float:
        import time

        time.sleep(seconds)
        return seconds

    return count_run, slow


async def test_reports_arrive_with_the_address_clients_tasks_and_versions(
    cluster: Cluster,
) -> None:
    path, report = cluster.stub.reports[0][0], cluster.stub.reports[0][1]
    assert path == f"/services/allotment/api/dask/report token {TOKEN}"
    assert report["address"].startswith("tls://") and not report["address"].startswith(
        "tls://0.0.0.0"
    )
    assert report["dashboard"].startswith("https://")
    import dask
    import distributed

    assert report["versions"]["dask"] == dask.__version__
    assert report["versions"]["distributed"] == distributed.__version__
    assert report["versions"]["python"].startswith(f"{sys.version_info[0]}.{sys.version_info[1]}.")
    idle = await cluster.stub.wait_for(lambda r: True)
    assert idle["clients"] == 0 and idle["tasks"] == 0, "the scheduler's own client is not one"

    async with Client(cluster.address, security=cluster.security(), asynchronous=True) as c:
        future = c.submit(tasks()[1], 4, pure=False)
        busy = await cluster.stub.wait_for(lambda r: r["tasks"] >= 1)
        assert busy["clients"] == 1
        assert busy["adaptive_target"] >= 1
        assert await future == 4
        await cluster.stub.wait_for(lambda r: r["tasks"] == 0 and r["clients"] == 1)
    assert not cluster.stub.invalid, "every report is a valid DaskSchedulerReport"


async def test_the_command_line_holds_no_secret(cluster: Cluster) -> None:
    lines = [cmd for _, cmd in command_lines() if b"allotment-dask-" in cmd]
    assert len(lines) >= 3, "the scheduler and both workers are running"
    for cmd in lines:
        for secret in (TOKEN, cluster.key, cluster.cert):
            assert secret.encode() not in cmd
        assert b"BEGIN" not in cmd


async def test_a_client_with_the_clusters_credentials_computes_on_its_workers(
    cluster: Cluster,
) -> None:
    async with Client(cluster.address, security=cluster.security(), asynchronous=True) as c:
        await c.wait_for_workers(2)
        info = c.scheduler_info()
        names = {str(w["name"]) for w in info["workers"].values()}
        assert names == {str(w) for w in cluster.workers}, "a worker's name is its workload id"
        assert await c.submit(sum, [1, 2, 3]) == 6


async def test_another_clusters_credentials_are_refused_at_the_handshake(
    cluster: Cluster,
) -> None:
    other = client_security(*credentials())
    with pytest.raises((OSError, TimeoutError)):
        async with Client(cluster.address, security=other, asynchronous=True, timeout="3s"):
            pass
    plain = cluster.address.replace("tls://", "tcp://")
    with pytest.raises((OSError, TimeoutError)):
        async with Client(plain, asynchronous=True, timeout="3s"):
            pass


def _get(url: str, ctx: ssl.SSLContext) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, context=ctx, timeout=10) as answer:  # noqa: S310
        return answer.status, answer.read()


async def test_the_dashboard_requires_the_clusters_client_certificate(
    cluster: Cluster, tmp_path: Path
) -> None:
    url = cluster.dashboard + dashboard_path("/hub/", CLUSTER) + "/status"
    anonymous = ssl.create_default_context(cadata=cluster.cert)
    anonymous.check_hostname = False
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        await asyncio.to_thread(_get, url, anonymous)

    stranger = ssl.create_default_context(cadata=cluster.cert)
    stranger.check_hostname = False
    cert, key = credentials()
    (tmp_path / "other.crt").write_text(cert)
    (tmp_path / "other.key").write_text(key)
    stranger.load_cert_chain(tmp_path / "other.crt", tmp_path / "other.key")
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        await asyncio.to_thread(_get, url, stranger)

    owner = ssl.create_default_context(cadata=cluster.cert)
    owner.check_hostname = False
    (tmp_path / "c.crt").write_text(cluster.cert)
    (tmp_path / "c.key").write_text(cluster.key)
    owner.load_cert_chain(tmp_path / "c.crt", tmp_path / "c.key")
    status, body = await asyncio.to_thread(_get, url, owner)
    assert status == 200 and b"bokeh" in body.lower()

    # Served under the service's origin: it proxies nothing from elsewhere.
    port = cluster.dashboard.rsplit(":", 1)[1]
    proxied = cluster.dashboard + dashboard_path("/hub/", CLUSTER) + f"/proxy/{port}/127.0.0.1/"
    with pytest.raises(urllib.error.HTTPError) as refused:
        await asyncio.to_thread(_get, proxied, owner)
    assert refused.value.code == 404


async def test_no_port_of_the_cluster_serves_anyone_without_its_certificate(
    cluster: Cluster,
) -> None:
    """The scheduler's comm and dashboard, and each worker's comm and HTTP (health) port."""
    groups = cluster.backend.cgroups
    assert groups is not None
    ports = cluster_ports(
        pid for w in [cluster.scheduler, *cluster.workers] for pid in groups.procs(w)
    )
    assert len(ports) >= 2 + 2 * len(cluster.workers), ports
    anonymous = ssl.create_default_context(cadata=cluster.cert)
    anonymous.check_hostname = False
    for port in sorted(ports):
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            await asyncio.to_thread(_get, f"https://127.0.0.1:{port}/health", anonymous)
        with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
            await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/health", anonymous)


async def test_sigterm_on_a_worker_moves_its_data_without_recomputing(cluster: Cluster) -> None:
    marker = cluster.shared / "runs"
    leaving, staying = sorted(cluster.workers)
    async with Client(cluster.address, security=cluster.security(), asynchronous=True) as c:
        await c.wait_for_workers(2)
        by_name = {str(w["name"]): a for a, w in c.scheduler_info()["workers"].items()}
        held = c.submit(
            tasks()[0], str(marker), 10_000, workers=[by_name[str(leaving)]], pure=False
        )
        await asyncio.wait_for(asyncio.shield(held), 60)
        assert set((await c.who_has(held))[held.key]) == {by_name[str(leaving)]}

        await cluster.backend.stop(leaving, cluster.workers[leaving], grace=30)
        seen = await ended(cluster.backend, leaving, cluster.workers[leaving])
        assert seen.exit_code == 0 and not seen.failed, seen.reason
        del cluster.workers[leaving]

        assert len(await held) == 10_000
        assert set((await c.who_has(held))[held.key]) == {by_name[str(staying)]}
        assert marker.read_text() == "ran\n", "the data moved: the task did not run again"


async def test_the_scheduler_keeps_reporting_through_a_service_outage(cluster: Cluster) -> None:
    before = len(cluster.stub.reports)
    for status in (503, 404):  # down; then a mistaken "unknown cluster", briefly
        cluster.stub.refuse = status
        await asyncio.sleep(3)
    cluster.stub.refuse = 0
    assert len(cluster.stub.reports) == before, "refused reports are not recorded"
    back = await cluster.stub.wait_for(lambda r: True, seconds=30)
    assert back["address"] == cluster.address


async def test_the_scheduler_retires_the_workers_the_service_names(cluster: Cluster) -> None:
    ((wid, placement),) = cluster.workers.items()
    cluster.stub.orders = DaskSchedulerOrders(retire=[str(wid)], report_every=1)
    seen = await ended(cluster.backend, wid, placement, seconds=60)
    assert seen.exit_code == 0 and not seen.failed, seen.reason
    await cluster.stub.wait_for(lambda r: r["workers"] == [])
