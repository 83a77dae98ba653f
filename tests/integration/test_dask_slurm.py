# mypy: disable-error-code="no-untyped-call"
"""A Dask cluster scaled out onto a Slurm pool: the scheduler on this machine's local pool,
the workers Slurm jobs of alice's POSIX account on the nodes of the real three-node cluster
(``slurm_cluster``, tests/support/slurm.py); the same `AllotmentCluster` call with another
profile. A node that dies takes its worker with it; the work finishes and the worker is
replaced.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import dask.array as da
import numpy as np
import pytest
from distributed import Client

from tests.backends.conftest import ROOT
from tests.support.dask import DaskService, DaskUnavailable, dask_service, running
from tests.support.hub import Hub
from tests.support.jobs import wait_for
from tests.support.slurm import SlurmCluster

pytestmark = [
    pytest.mark.jupyterhub,
    # The test process runs root's own Python (3.11.7 here); the clusters run the environment
    # users can run (Debian's 3.11.2): the same minor version, which is what must match.
    pytest.mark.filterwarnings("ignore::distributed.versions.VersionMismatchWarning"),
    pytest.mark.skipif(not ROOT, reason="submits jobs as other POSIX accounts: needs root"),
]

POLICY = """\
currency: credits
slurm:
  conf: {conf}
  poll_interval: 1s
accounts:
  lab: {{members: [alice, bob]}}
pools:
  box:
    backend: local
    nodes: [{{name: localhost, cpus: 8, memory: 8G}}]
  cluster:
    backend: slurm
    partition: {partition}
    nodes:
{nodes}
    rates: {{cpu: 3600}}
profiles:
  dask-local:
    pool: box
    size: {{cpus: 0.5, memory: 1G}}
  dask-slurm:
    pool: cluster
    size: {{cpus: 1, memory: 1G}}
    max_runtime: 1h
dask:
  profile: dask-slurm
  scheduler_profile: dask-local
  scheduler_cpus: 0.5
  scheduler_memory: 1G
  max_workers: 6
  idle_timeout: 5m
  owner_grace: 30s
scheduling: {{stop_grace: 5s, interval: 1s, estimate_interval: 1s}}
accounting: {{interval: 1s, entry: 1m}}
"""


@pytest.fixture(scope="module")
def svc(
    tmp_path_factory: pytest.TempPathFactory, hub: Hub, slurm_cluster: SlurmCluster
) -> Iterator[DaskService]:
    nodes = "\n".join(f"      - {{name: {n}, cpus: 2, memory: 4G}}" for n in slurm_cluster.nodes)
    text = POLICY.format(conf=slurm_cluster.conf, partition=slurm_cluster.partition, nodes=nodes)
    try:
        with dask_service(tmp_path_factory.mktemp("dask-slurm"), hub, policy=text) as s:
            admin = (s.data / "admin-token").read_text().strip()
            path = s.data.parent / "dask.yaml"
            applied = s.job.allot(admin, "config", "apply", str(path))
            assert applied.returncode == 0, applied.stdout + applied.stderr
            yield s
    except DaskUnavailable as e:
        pytest.skip(str(e))


def _workers(svc: DaskService, name: str) -> list[dict[str, Any]]:
    return [
        w
        for w in svc.workloads("alice", "dask-worker", ["running"])
        if w["name"] == f"{name}-worker"
    ]


@pytest.mark.timeout(420)
def test_workers_on_slurm_compute_and_a_dead_nodes_worker_is_replaced(
    svc: DaskService, slurm_cluster: SlurmCluster
) -> None:
    cluster = svc.cluster("alice", profile="dask-slurm", account="lab", name="wide", workers=3)
    try:
        running(svc, "alice", "wide", 3, 180)
        first = _workers(svc, "wide")
        assert {w["pool"] for w in first} == {"cluster"}, first
        nodes = {str(w["node"]) for w in first}
        assert nodes <= set(slurm_cluster.nodes) and len(nodes) >= 2, first
        with Client(cluster, set_as_default=False) as client:
            client.wait_for_workers(3, timeout=120)
            x = da.arange(3_000_000, chunks=200_000, dtype="int64")
            assert int(client.compute(x.sum()).result()) == int(
                np.arange(3_000_000, dtype="int64").sum()
            )

            # Defined here, not at module level: a local function travels by value (the workers
            # do not have this checkout's tests to import it from).
            def _slow(x: int) -> int:
                time.sleep(0.5)
                return x + 1

            futures = client.map(_slow, range(40), pure=False)
            node = str(first[0]["node"])
            slurm_cluster.kill_node(node)
            try:
                # Dask recomputes what the dead node's worker held; the work finishes.
                assert sum(client.gather(futures)) == sum(range(1, 41))
                # Slurm declares the node down (~30 s here); the worker is replaced elsewhere.
                wait_for(
                    lambda: (
                        len(w := _workers(svc, "wide")) >= 3 and all(x["node"] != node for x in w)
                    ),
                    240,
                    every=1,
                    what="3 workers, none on the dead node",
                )
                client.wait_for_workers(3, timeout=120)
                assert client.submit(sum, [1, 2]).result() == 3
            finally:
                slurm_cluster.start_node(node)
    finally:
        cluster.close()
