"""Dask clusters: the rules of their names, states and sizes.

A Dask cluster is a scheduler workload and any number of worker workloads, tied together by a
``dask_clusters`` row. The service builds every command they run (``domain.dask_commands``);
the controller moves the number of live workers towards what the owner asked for (``scale``)
or what the scheduler asks for within the owner's bounds (``adapt``).
"""

from __future__ import annotations

import re
from enum import IntEnum

__all__ = [
    "CLUSTER_NAME",
    "ClusterState",
    "check_cluster_name",
    "clamp_workers",
    "dashboard_path",
    "idle_worker_ids",
]

#: A cluster's name: what `AllotmentCluster.connect(name)` and `allot dask` take.
CLUSTER_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}\Z")


class ClusterState(IntEnum):
    """Lifecycle of a cluster, in order."""

    #: Its scheduler is waiting for admission or starting.
    STARTING = 0
    #: Its scheduler runs and has reported its address.
    RUNNING = 1
    #: Told to stop: its workers and then its scheduler are being stopped.
    STOPPING = 2
    STOPPED = 3
    #: Its scheduler failed or could not start.
    FAILED = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @property
    def ended(self) -> bool:
        return self >= ClusterState.STOPPED


def check_cluster_name(name: str) -> str:
    """``name`` if it is a valid cluster name; ValueError saying how to write one otherwise."""
    if not CLUSTER_NAME.match(name):
        raise ValueError(
            f"cluster name {name!r} must be 1-63 lower-case letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def clamp_workers(wanted: int, minimum: int, maximum: int) -> int:
    """The number of workers to run: ``wanted`` within ``[minimum, maximum]``."""
    return max(minimum, min(maximum, wanted))


def dashboard_path(base_url: str, cluster_id: int) -> str:
    """Where a cluster's dashboard is served through the service's authenticated proxy (the
    scheduler serves it under this same prefix, so its links need no rewriting)."""
    return f"/{base_url.strip('/')}/dask/{cluster_id}/dashboard".replace("//", "/")


def idle_worker_ids(names: list[str], limit: int) -> list[int]:
    """The workloads among a scheduler's idle workers (Dask names them by workload id), best
    first, at most ``limit``: names that are no workload id (a worker someone else started
    with the cluster's credentials) are left out."""
    found: list[int] = []
    for name in names:
        if len(found) >= limit:
            break
        if name.isascii() and name.isdigit() and len(name) <= 18 and int(name) not in found:
            found.append(int(name))
    return found
