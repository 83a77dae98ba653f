# distributed's Cluster, rpc and Security carry no annotations; everything of ours here does.
# mypy: disable-error-code="no-untyped-call"
"""``AllotmentCluster``: a Dask cluster whose scheduler and workers are Allotment workloads.

The cluster lives in the service, not in this object: creating one asks the API for it, and
the service queues its scheduler and workers like any other work (one policy, one queue, one
meter). This object is a thin client of it that ``distributed`` recognises as a cluster
manager (``Client(cluster)``, the JupyterLab Dask extension, ``get_logs()``): it waits for the
scheduler, connects to it over mutual TLS with the cluster's own credentials (kept in memory
only), and heartbeats to the service so that a cluster whose notebook died is stopped.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import os
import sys
import time
import uuid
from collections.abc import Generator
from contextlib import suppress
from importlib.metadata import version
from typing import Any

from distributed.core import Status, rpc
from distributed.deploy.cluster import Cluster
from distributed.security import Security

from allotment.client import AllotmentClient, ApiError, AsyncAllotmentClient, discover, search_path
from allotment.dask.display import cluster_html, scaling_html
from allotment.schemas import DaskAdapt, DaskClusterCreate, DaskClusterOut

__all__ = ["AllotmentCluster", "ClusterFailed"]

logger = logging.getLogger(__name__)

#: Seconds between heartbeats (and refreshes of what the service says of the cluster).
HEARTBEAT = 10.0
#: Seconds between looks at a scheduler that is not running yet: the first, and the most.
POLL_FIRST, POLL_MOST = 0.25, 2.0


class ClusterFailed(RuntimeError):
    """The cluster ended (failed or was stopped) before it could be used; the message is the
    service's reason."""


def versions() -> dict[str, str]:
    """This interpreter's versions that the scheduler and workers must match."""
    return {
        "python": ".".join(map(str, sys.version_info[:3])),
        "dask": version("dask"),
        "distributed": version("distributed"),
    }


def _session(environ: dict[str, str] | os._Environ[str]) -> int | None:
    """The Allotment session this runs in (it will own the cluster), or None: a session has
    the service's URL, its workload id and its hub token (a batch job has no hub token)."""
    workload = environ.get("ALLOT_WORKLOAD_ID", "")
    if environ.get("ALLOTMENT_URL") and environ.get("JUPYTERHUB_API_TOKEN") and workload.isdigit():
        return int(workload)
    return None


def _where(url: str | None, token: str | None) -> tuple[str, str]:
    """The service URL and token: as given, else the session's own (``$ALLOTMENT_URL``,
    ``$JUPYTERHUB_API_TOKEN``), else those the CLI finds (``$ALLOTMENT_TOKEN``)."""
    if _session(os.environ) is not None:
        url = url or os.environ["ALLOTMENT_URL"]
        token = token or os.environ["JUPYTERHUB_API_TOKEN"]
    found_url, found_token = discover(search_path())
    token = token or found_token
    if not token:
        raise ValueError(
            "no Allotment token: pass token=, set $ALLOTMENT_TOKEN, or run inside an "
            "Allotment session (which sets $JUPYTERHUB_API_TOKEN)"
        )
    return url or found_url, token


def _adapt_bounds(adapt: DaskAdapt | tuple[int, int] | None) -> DaskAdapt | None:
    if adapt is None or isinstance(adapt, DaskAdapt):
        return adapt
    minimum, maximum = adapt
    return DaskAdapt(minimum=minimum, maximum=maximum)


def _browser_link(service_url: str, link: str | None, environ: Any = os.environ) -> str:
    """The dashboard link a browser opens: the service's link as it is when absolute, or
    inside a session (the browser is already on the hub's origin); else on the origin of the
    URL this client reaches the service at."""
    if not link:
        return ""
    if "://" in link or environ.get("JUPYTERHUB_SERVICE_PREFIX"):
        return link
    scheme, _, rest = service_url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}{link}" if rest else link


class AllotmentCluster(Cluster):
    """A Dask cluster run by Allotment: its scheduler and workers are workloads of yours,
    admitted within your account's quota and charged to it.

    Parameters
    ----------
    profile
        The workers' profile (default: the site's ``dask.profile``).
    account
        Account to charge (default: your default account).
    name
        Unique among your clusters that have not ended; ``connect(name)`` reattaches to it.
        Default: the service makes one up.
    cpus, memory, threads, gpus
        Each worker's size, within the profile's options (as a session's).
    workers
        Workers to start with.
    adapt
        ``(minimum, maximum)``: let the scheduler ask for workers as its load needs.
    shutdown_on_close
        Stop the cluster when this object is closed or its process dies (it heartbeats while
        it lives). False: the cluster outlives it until stopped or idle.
    python
        The interpreter the scheduler and workers run (default: this one, with its packages).
    url, token
        The service and your token (default: the session's own, else ``$ALLOTMENT_URL`` and
        ``$ALLOTMENT_TOKEN``).
    timeout
        Seconds to wait for the scheduler to run (it may wait in the queue); None: forever.
    """

    def __init__(
        self,
        profile: str | None = None,
        account: str | None = None,
        name: str | None = None,
        cpus: float | None = None,
        memory: int | str | None = None,
        threads: int | None = None,
        gpus: int | None = None,
        workers: int = 0,
        adapt: DaskAdapt | tuple[int, int] | None = None,
        shutdown_on_close: bool = True,
        python: str = sys.executable,
        url: str | None = None,
        token: str | None = None,
        asynchronous: bool = False,
        loop: Any = None,
        timeout: float | None = 600.0,
        quiet: bool = True,
    ) -> None:
        request = DaskClusterCreate(
            name=name,
            account=account,
            profile=profile,
            cpus=cpus,
            memory=memory,
            gpus=gpus,
            threads=threads,
            python=python,
            versions=versions(),
            workers=workers,
            adapt=_adapt_bounds(adapt),
            shutdown_on_close=shutdown_on_close,
            session=_session(os.environ),
        )
        self._setup(url, token, request, None, shutdown_on_close, timeout)
        super().__init__(asynchronous=asynchronous, loop=loop, quiet=quiet, name=name)
        self._begin()

    # -- making and reattaching -------------------------------------------------------------

    def _setup(
        self,
        url: str | None,
        token: str | None,
        request: DaskClusterCreate | None,
        existing: str | None,
        shutdown_on_close: bool,
        timeout: float | None,
    ) -> None:
        self._url, self._token = _where(url, token)
        self._request = request
        self._existing = existing
        self.shutdown_on_close = shutdown_on_close
        self._timeout = timeout
        self._api: AsyncAllotmentClient | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        #: What the service last said of the cluster (None until it exists).
        self.info: DaskClusterOut | None = None
        self.security: Security | None = None

    def _begin(self) -> None:
        """Start it now unless the caller awaits it (``asynchronous=True``)."""
        if not self.asynchronous:
            self._loop_runner.start()
            try:
                self.sync(self._start)
            except BaseException:
                with suppress(Exception):
                    self.sync(self._close)
                self._loop_runner.stop()
                raise

    @classmethod
    def connect(
        cls,
        name: str,
        *,
        shutdown_on_close: bool = False,
        url: str | None = None,
        token: str | None = None,
        asynchronous: bool = False,
        loop: Any = None,
        timeout: float | None = 600.0,
        quiet: bool = True,
    ) -> AllotmentCluster:
        """Reattach to your cluster ``name`` (from another notebook or a script).

        ``close()`` then only detaches, unless ``shutdown_on_close``; while this object lives
        it heartbeats, so a cluster made with ``shutdown_on_close`` stays up while any of its
        clients lives."""
        self = cls.__new__(cls)
        self._setup(url, token, None, name, shutdown_on_close, timeout)
        Cluster.__init__(self, asynchronous=asynchronous, loop=loop, quiet=quiet, name=name)
        self._begin()
        return self

    @classmethod
    def list(
        cls, *, ended: bool = False, url: str | None = None, token: str | None = None
    ) -> builtins.list[DaskClusterOut]:
        """Your clusters that have not ended (``ended``: those too), newest first."""
        url, token = _where(url, token)
        with AllotmentClient(url, token) as c:
            return c.dask_clusters(ended=ended)

    def __await__(self) -> Generator[Any, None, AllotmentCluster]:
        async def started() -> AllotmentCluster:
            if self.status == Status.created:
                try:
                    await self._start()
                except BaseException:
                    await self._close()
                    raise
            return self

        return started().__await__()

    async def _start(self) -> None:
        if self.status != Status.created:
            return
        self.status = Status.starting
        self._api = AsyncAllotmentClient(self._url, self._token)
        if self._request is not None:
            # A fresh key per cluster: the client retries a creation whose answer was lost
            # (a restarting service) without making a second cluster.
            self.info = await self._api.create_dask_cluster(
                self._request, idempotency_key=str(uuid.uuid4())
            )
            self._log(
                f"Cluster {self.info.name} asked for (scheduler workload {self.info.scheduler})"
            )
        else:
            assert self._existing is not None
            self.info = await self._api.dask_cluster(self._existing)
        self.name = self.info.name
        self._heartbeat_task = asyncio.ensure_future(self._heartbeat())
        info = await self._running()
        creds = await self._api.dask_credentials(info.name)
        # In memory only: distributed takes PEM text in place of file names.
        self.security = Security(
            tls_ca_file=creds.tls_cert,
            tls_client_cert=creds.tls_cert,
            tls_client_key=creds.tls_key,
            require_encryption=True,
        )
        address = creds.address or info.address
        assert address is not None
        self.scheduler_comm = rpc(
            address, connection_args=self.security.get_connection_args("client")
        )
        await super()._start()
        # Cluster's start reads a name from the scheduler's metadata: the service's is the one.
        self.name = info.name

    async def _running(self) -> DaskClusterOut:
        """The cluster once its scheduler runs; ``ClusterFailed`` with the service's reason
        if it ended first, ``TimeoutError`` with what it waits for if ``timeout`` passed."""
        assert self._api is not None and self.info is not None
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        wait = POLL_FIRST
        info = self.info
        while True:
            if info.state == "running" and info.address:
                return info
            if info.state in ("stopping", "stopped", "failed"):
                raise ClusterFailed(
                    f"Dask cluster {info.name} {info.state}: {info.reason or 'no reason given'}"
                )
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"Dask cluster {info.name}: its scheduler did not start within "
                    f"{self._timeout:g} s. {await self._scheduler_waits(info)}"
                )
            await asyncio.sleep(wait)
            wait = min(wait * 2, POLL_MOST)
            info = self.info = await self._api.dask_cluster(info.name)

    async def _scheduler_waits(self, info: DaskClusterOut) -> str:
        """Why the scheduler's workload waits, in the service's words (best effort)."""
        assert self._api is not None
        if info.scheduler is None:
            return info.reason
        try:
            w = await self._api.workload(info.scheduler)
        except ApiError:
            return info.reason
        where = f" (position {w.position} in the queue)" if w.position else ""
        eta = f", expected to start {w.expected_start:%H:%M}" if w.expected_start else ""
        return f"It is {w.status}{where}{eta}: {w.reason or info.reason}"

    async def _heartbeat(self) -> None:
        """While this object lives: tell the service a client lives (when the cluster should
        stop without one) and keep ``info`` current for the display."""
        assert self._api is not None
        while True:
            await asyncio.sleep(HEARTBEAT)
            if self.info is None:
                continue
            try:
                if self.shutdown_on_close or self.info.shutdown_on_close:
                    self.info = await self._api.dask_heartbeat(self.info.name)
                else:
                    self.info = await self._api.dask_cluster(self.info.name)
            except Exception as e:  # the next one may get through: keep beating
                logger.warning("Dask cluster %s: heartbeat failed: %s", self.info.name, e)
                continue
            if self.info.state in ("stopped", "failed"):
                return  # ended (stopped, culled or failed): nothing left to keep alive

    # -- scaling (done by the service, within your account's quota) --------------------------

    def scale(self, n: int) -> Any:
        """Ask for ``n`` workers (ends adaptive scaling). Those that do not fit in the
        account's quota wait in the queue: they are "requested", not failed."""
        return self.sync(self._scale, n)

    async def _scale(self, n: int) -> None:
        api, name = self._live()
        self.info = await api.scale_dask_cluster(name, n)

    def adapt(self, minimum: int = 0, maximum: int = 0, **kwargs: Any) -> Any:  # type: ignore[override]
        """Let the scheduler ask for workers as its load needs, between ``minimum`` and
        ``maximum`` (the service applies the bounds; nothing runs here)."""
        if kwargs:
            raise TypeError(f"adapt() takes minimum and maximum only, not {sorted(kwargs)}")
        return self.sync(self._adapt, minimum, maximum)

    async def _adapt(self, minimum: int, maximum: int) -> None:
        api, name = self._live()
        self.info = await api.adapt_dask_cluster(name, minimum=minimum, maximum=maximum)

    def _live(self) -> tuple[AsyncAllotmentClient, str]:
        """The API client and the cluster's name in the service, once it started."""
        if self._api is None or self.info is None:
            raise RuntimeError("the cluster has not started: await it first")
        return self._api, self.info.name

    # -- closing --------------------------------------------------------------------------

    async def _close(self) -> None:
        if self.status == Status.closed:
            return
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            with suppress(asyncio.CancelledError):
                await self._heartbeat_task
        if self._api is not None:
            try:
                if self.shutdown_on_close and self.info is not None:
                    self.info = await self._api.stop_dask_cluster(self.info.name)
            except ApiError as e:
                logger.warning("Dask cluster %s: stop failed: %s", self.name, e)
            finally:
                await self._api.aclose()
        await super()._close()

    def close(self, timeout: float | None = None) -> Any:
        """Stop the cluster (``shutdown_on_close``) or only detach from it."""
        result = super().close(timeout)
        if not self.asynchronous:
            self._loop_runner.stop()
        return result

    def shutdown(self) -> Any:
        """Stop the cluster, whatever ``shutdown_on_close`` says."""
        self.shutdown_on_close = True
        return self.close()

    # -- what users see -------------------------------------------------------------------

    @property
    def dashboard_link(self) -> str:
        """The dashboard through the hub-authenticated proxy (only you may open it)."""
        info = self.info
        return _browser_link(self._url, info.dashboard_link if info else None)

    def _scaling_status(self) -> str:
        return scaling_html(self.info, len(self.scheduler_info["workers"]))

    def _repr_html_(self, cluster_status: Any = None) -> str:
        return cluster_html(self, self.info, self._scaling_status(), cluster_status)
