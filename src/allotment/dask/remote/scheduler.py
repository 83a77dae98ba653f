"""A Dask cluster's scheduler, as Allotment runs it in the researcher's environment.

Run by ``domain.dask_commands.scheduler_launch``: its text arrives in ``ALLOT_DASK_PROGRAM``
and runs as ``__main__``, so it imports only the standard library, dask, distributed and
tornado (allotment need not be installed where it runs). Everything it needs is in its
environment (``ALLOT_DASK_*``), which only its user and root can read.

- Comms: ``tls://`` with encryption required; the cluster's own certificate is the only CA
  and every role's certificate, so only holders of this cluster's credentials get in.
- Dashboard: HTTPS under the service's proxy prefix, and a client certificate signed by the
  cluster's CA is REQUIRED (distributed's own dashboard TLS asks for none): the service's
  proxy presents the cluster's certificate, nobody else can.
- Reports: every few seconds (first at once) it tells the service its address, clients,
  tasks and adaptive target, and retires the workers the service names.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import signal
import ssl
import tempfile
import time
import urllib.error
import urllib.request
from importlib import metadata
from typing import Any

import dask
from distributed import Scheduler
from distributed.security import Security
from distributed.utils import get_ip

log = logging.getLogger("allotment.dask.scheduler")

#: The scheduler's own client (``fire-and-forget``) is no researcher's.
OWN_CLIENTS = frozenset({"fire-and-forget"})
#: Task states that are not finished: the cluster is busy while any task is in one.
UNFINISHED = frozenset({"waiting", "no-worker", "queued", "processing"})
#: How long the service may deny knowing the cluster before the scheduler gives up (it answers
#: 404 only for an ended cluster; a few answers in a row rule out a passing mistake).
GIVE_UP_AFTER = 60.0


def versions() -> dict[str, str]:
    """What the service compares with the versions the client reported (read the same way,
    from the installed distributions)."""
    return {
        "python": platform.python_version(),
        "dask": metadata.version("dask"),
        "distributed": metadata.version("distributed"),
    }


def security(cert: str, key: str) -> Security:
    """Mutual TLS with the cluster's certificate (its own CA) for every role, in memory."""
    roles = ("scheduler", "worker", "client")
    kwargs: dict[str, Any] = {"tls_ca_file": cert, "require_encryption": True}
    for role in roles:
        kwargs[f"tls_{role}_cert"] = cert
        kwargs[f"tls_{role}_key"] = key
    return Security(**kwargs)  # type: ignore[no-untyped-call]


def dashboard_context(cert: str, key: str) -> ssl.SSLContext:
    """HTTPS that requires a client certificate signed by the cluster's CA.

    The key is loaded from a private (0700) temporary directory that is removed as soon as it
    is loaded: ``ssl`` reads keys only from files, and nothing needs them after."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cadata=cert)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory(prefix="allot-dask-") as private:
        os.chmod(private, 0o700)
        cert_path = os.path.join(private, "cluster.crt")
        key_path = os.path.join(private, "cluster.key")
        for path, text in ((cert_path, cert), (key_path, key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
        ctx.load_cert_chain(cert_path, key_path)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = False
    return ctx


class AllotmentScheduler(Scheduler):
    """A scheduler whose dashboard never accepts a connection without the cluster's client
    certificate: the context is given to the HTTP server as it is made, and checked right
    after (synchronously, before the event loop can accept anything)."""

    dashboard_ssl: ssl.SSLContext | None = None

    def start_http_server(
        self,
        routes: Any,
        dashboard_address: Any,
        default_port: int = 0,
        ssl_options: Any = None,
    ) -> None:
        ctx = type(self).dashboard_ssl
        if ctx is None:
            raise RuntimeError("the dashboard's TLS context is not set")
        super().start_http_server(  # type: ignore[no-untyped-call]
            routes, dashboard_address, default_port, ssl_options=ctx
        )
        served = self.http_server.ssl_options
        if not isinstance(served, ssl.SSLContext):
            raise RuntimeError("the dashboard would be served without TLS")
        served.verify_mode = ssl.CERT_REQUIRED


def routes() -> list[str]:
    """The dashboard's routes, less the proxy to any host and port (with jupyter-server-proxy
    installed, ``/proxy/PORT/HOST/``): the service serves the dashboard under its own origin,
    where a page fetched from anywhere must never appear."""
    configured = dask.config.get("distributed.scheduler.http.routes")
    return [r for r in configured if r != "distributed.http.proxy"]


def dashboard_port(scheduler: Scheduler) -> int:
    """The port the dashboard listens on (``start_http_server`` sets it)."""
    return int(scheduler.http_server.port)  # type: ignore[attr-defined]


def unfinished_tasks(scheduler: Scheduler) -> int:
    return sum(1 for ts in scheduler.tasks.values() if ts.state in UNFINISHED)


def report(scheduler: Scheduler, host: str) -> dict[str, Any]:
    """A ``DaskSchedulerReport`` (the service's schema) of the scheduler now."""
    port = dashboard_port(scheduler)
    try:
        target = int(scheduler.adaptive_target())
        idle = [str(n) for n in scheduler.workers_to_close(attribute="name")]
    except Exception:  # a scheduler mid-change must still report its address
        log.exception("could not compute the adaptive target")
        target, idle = len(scheduler.workers), []
    return {
        "address": scheduler.address,
        "dashboard": f"https://{host}:{port}",
        "workers": [str(ws.name) for ws in scheduler.workers.values()],
        "clients": sum(1 for c in scheduler.clients if c not in OWN_CLIENTS),
        "tasks": unfinished_tasks(scheduler),
        "adaptive_target": max(0, target),
        "idle_workers": idle,
        "versions": versions(),
    }


def post(url: str, token: str, body: dict[str, Any], timeout: float = 10) -> tuple[int, Any]:
    """POST JSON with the cluster's token; (status, decoded answer or None)."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Authorization": f"token {token}",
            "User-Agent": "allotment-dask-scheduler",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None


async def reporting(scheduler: Scheduler, url: str, token: str, host: str) -> None:
    """Report until the scheduler closes; retire the workers the service names. The service
    being briefly unreachable only delays the next report."""
    every = 5.0
    denied_since: float | None = None
    retiring: set[str] = set()
    while scheduler.status.name not in ("closing", "closed", "failed"):
        try:
            status, orders = await asyncio.to_thread(post, url, token, report(scheduler, host))
        except (OSError, ValueError) as e:
            log.warning("could not report to the service: %s", type(e).__name__)
            status, orders = 0, None
        except Exception:  # never stop reporting: the service would take it for dead
            log.exception("could not report to the service")
            status, orders = 0, None
        if status in (401, 403, 404):
            denied_since = denied_since or time.monotonic()
            if time.monotonic() - denied_since >= GIVE_UP_AFTER:
                log.warning("the service no longer knows this cluster (%d): closing", status)
                await scheduler.close(reason="the service ended the cluster")
                return
        else:
            denied_since = None
        if status == 200 and isinstance(orders, dict):
            every = min(60.0, max(1.0, float(orders.get("report_every") or 5.0)))
            known = {str(ws.name) for ws in scheduler.workers.values()}
            retiring &= known  # those gone are done
            # Named again in every answer until they are gone: retire each once.
            asked = [str(n) for n in orders.get("retire") or []]
            if retire := [n for n in asked if n in known and n not in retiring]:
                log.info("retiring workers %s as the service asks", ", ".join(retire))
                retiring.update(retire)
                names: list[Any] = retire
                asyncio.ensure_future(scheduler.retire_workers(names=names, close_workers=True))
        elif status not in (0, 200):
            log.warning("the service answered %d to the report", status)
        await asyncio.sleep(every)


async def main() -> None:
    env = os.environ
    cert, key = env["ALLOT_DASK_TLS_CERT"], env["ALLOT_DASK_TLS_KEY"]
    token = env.pop("ALLOT_DASK_TOKEN")
    url = env["ALLOT_DASK_SERVICE_URL"].rstrip("/") + "/api/dask/report"
    prefix = env.get("ALLOT_DASK_DASHBOARD_PREFIX", "/")
    # The address other machines reach it at: the interface of the default route, unless
    # the environment names one.
    host = env.get("ALLOT_DASK_HOST") or get_ip()  # type: ignore[no-untyped-call]
    dask.config.set(
        {
            "distributed.comm.require-encryption": True,
            # Its own TLS (below), never what a config file says.
            "distributed.scheduler.dashboard.tls.cert": None,
            "distributed.scheduler.dashboard.tls.key": None,
            "distributed.scheduler.dashboard.tls.ca-file": None,
            "distributed.scheduler.http.routes": routes(),
        }
    )
    AllotmentScheduler.dashboard_ssl = dashboard_context(cert, key)
    scheduler = AllotmentScheduler(
        security=security(cert, key),
        protocol="tls",
        host="0.0.0.0",
        port=0,
        dashboard_address=":0",
        http_prefix=prefix,
    )
    await scheduler
    # Listening on every interface: tell the one other machines reach.
    port = scheduler.listeners[0].listen_address.rsplit(":", 1)[1]
    scheduler._address = f"tls://{host}:{port}"
    log.info(
        "scheduler at tls://%s:%s, dashboard on port %s", host, port, dashboard_port(scheduler)
    )

    loop = asyncio.get_running_loop()
    closing: list[asyncio.Future[Any]] = []

    def stop() -> None:
        # The backend repeats its SIGTERM until the process is gone: from now on ignore it,
        # also once the event loop has closed (which would restore the default, dying of it).
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)
        if not closing:
            closing.append(asyncio.ensure_future(scheduler.close(reason="stopped by a signal")))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    reporter = asyncio.ensure_future(reporting(scheduler, url, token, host))
    await scheduler.finished()  # type: ignore[no-untyped-call]
    reporter.cancel()
    for task in closing:
        await task


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(main())
