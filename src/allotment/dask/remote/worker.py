"""A Dask cluster's worker, as Allotment runs it in the researcher's environment.

Run by ``domain.dask_commands.worker_launch`` (its text arrives in ``ALLOT_DASK_PROGRAM`` and
runs as ``__main__``; it imports only the standard library, dask and distributed).

One process, no nanny: the backend already is one. It starts the workload, bounds its memory
and CPUs (cgroups or Slurm), replaces a worker that dies and stops it with SIGTERM; a nanny
would add a second process between that signal and the worker and a restart loop that
competes with the controller's. On SIGTERM the worker retires gracefully
(``close_gracefully``: the scheduler copies the data only it holds to other workers) and exits
0; the backend's stop grace bounds how long that may take. A worker killed hard is just lost
and Dask recomputes what it held.

Its Dask name is its workload id (``ALLOT_WORKLOAD_ID``), so the service can name the workers
to retire and tell the scheduler's workers from its own workloads.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
from typing import Any

import dask
from distributed import Worker
from distributed.security import Security

log = logging.getLogger("allotment.dask.worker")


def security(cert: str, key: str) -> Security:
    """Mutual TLS with the cluster's certificate (its own CA) for every role, in memory."""
    kwargs: dict[str, Any] = {"tls_ca_file": cert, "require_encryption": True}
    for role in ("scheduler", "worker", "client"):
        kwargs[f"tls_{role}_cert"] = cert
        kwargs[f"tls_{role}_key"] = key
    return Security(**kwargs)  # type: ignore[no-untyped-call]


class AllotmentWorker(Worker):
    """A worker whose HTTP port (its health check) asks for the cluster's client certificate,
    like every other port of the cluster: nobody else on the machine can use it. The context
    is given to the HTTP server as it is made, before the event loop can accept anything."""

    http_ssl: ssl.SSLContext | None = None

    def start_http_server(
        self,
        routes: Any,
        dashboard_address: Any,
        default_port: int = 0,
        ssl_options: Any = None,
    ) -> None:
        super().start_http_server(  # type: ignore[no-untyped-call]
            routes, dashboard_address, default_port, ssl_options=type(self).http_ssl
        )
        served = self.http_server.ssl_options
        if not isinstance(served, ssl.SSLContext):
            raise RuntimeError("the worker's HTTP port would be served without TLS")
        served.verify_mode = ssl.CERT_REQUIRED


def resources(text: str) -> dict[str, float]:
    """``GPU=2,FOO=1`` -> ``{"GPU": 2.0, "FOO": 1.0}`` (Dask's abstract resources)."""
    out: dict[str, float] = {}
    for part in text.split(","):
        if "=" in part:
            name, value = part.split("=", 1)
            out[name.strip()] = float(value)
    return out


async def main() -> int:
    env = os.environ
    cert, key = env["ALLOT_DASK_TLS_CERT"], env["ALLOT_DASK_TLS_KEY"]
    memory = int(env.get("ALLOT_DASK_MEMORY") or 0)
    dask.config.set(
        {
            "distributed.comm.require-encryption": True,
            # Only a health check, on the loopback interface and behind the cluster's
            # certificate: the scheduler's dashboard is where people look.
            "distributed.worker.http.routes": ["distributed.http.health"],
        }
    )
    secured = security(cert, key)
    # distributed's own server-side context for the worker: the cluster's CA, CERT_REQUIRED.
    AllotmentWorker.http_ssl = secured.get_listen_args("worker")["ssl_context"]  # type: ignore[no-untyped-call]
    worker = AllotmentWorker(
        env["ALLOT_DASK_SCHEDULER"],
        name=env.get("ALLOT_WORKLOAD_ID") or None,
        nthreads=int(env.get("ALLOT_DASK_THREADS") or 1),
        memory_limit=memory if memory > 0 else "auto",
        resources=resources(env.get("ALLOT_DASK_RESOURCES", "")) or None,
        security=secured,
        protocol="tls",
        dashboard=False,
        dashboard_address="127.0.0.1:0",
    )
    await worker
    stopping: list[asyncio.Future[Any]] = []

    loop = asyncio.get_running_loop()

    def retire() -> None:
        # The backend repeats its SIGTERM until the process is gone: from now on ignore it,
        # also once the event loop has closed (which would restore the default, dying of it).
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)
        if not stopping:
            log.info("asked to stop: retiring gracefully (the scheduler moves my data)")
            stopping.append(asyncio.ensure_future(worker.close_gracefully(reason="SIGTERM")))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, retire)
    await worker.finished()  # type: ignore[no-untyped-call]
    for task in stopping:
        await task
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    raise SystemExit(asyncio.run(main()))
