# mypy: disable-error-code="no-untyped-call"
"""Dask clusters end to end: a real `allot serve`, `AllotmentCluster` as a notebook calls it,
real dask.distributed schedulers and workers running as the hub users' own POSIX accounts in
cgroups (tests/support/dask.py), tokens from a real JupyterHub. One service for the module;
the policy's timers are short (idle 20 s; owner grace 20 s, the least the policy allows, twice
the client's 10 s heartbeat) so that the culler acts within a test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import dask.array as da
import httpx
import numpy as np
import pytest
from distributed import Client
from distributed.security import Security

from tests.backends.conftest import ROOT
from tests.support.dask import (
    DaskService,
    DaskUnavailable,
    cluster_ports,
    dask_service,
    probe_as,
    running,
)
from tests.support.hub import Hub
from tests.support.jobs import wait_for
from tests.support.process import clean_env

pytestmark = [
    pytest.mark.jupyterhub,
    # The test process runs root's own Python (3.11.7 here); the clusters run the environment
    # users can run (Debian's 3.11.2): the same minor version, which is what must match.
    pytest.mark.filterwarnings("ignore::distributed.versions.VersionMismatchWarning"),
    pytest.mark.skipif(not ROOT, reason="runs clusters as other POSIX accounts: needs root"),
]


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory, hub: Hub) -> Iterator[DaskService]:
    try:
        with dask_service(tmp_path_factory.mktemp("dask"), hub) as s:
            yield s
    except DaskUnavailable as e:
        pytest.skip(str(e))


def _ended(svc: DaskService, user: str, name: str, seconds: float = 90) -> dict[str, Any]:
    return dict(
        wait_for(
            lambda: (
                (c := svc.show(user, name, ended=True))
                and c["state"] in ("stopped", "failed")
                and c
            ),
            seconds,
            every=0.5,
            what=f"cluster {name} to end",
        )
    )


def _workers(svc: DaskService, user: str, name: str, status: list[str]) -> list[dict[str, Any]]:
    return [w for w in svc.workloads(user, "dask-worker", status) if w["name"] == f"{name}-worker"]


@pytest.mark.timeout(300)
def test_an_array_reduction_is_right_and_a_killed_worker_is_replaced_and_charged(
    svc: DaskService,
) -> None:
    cluster = svc.cluster("alice", account="lab", name="arr", workers=3)
    try:
        with Client(cluster, set_as_default=False) as client:
            client.wait_for_workers(3, timeout=120)
            x = da.arange(6_000_000, chunks=250_000, dtype="int64").reshape(3000, 2000)
            assert int((x**2).sum(axis=0).sum().compute()) == int(
                (np.arange(6_000_000, dtype="int64") ** 2).sum()
            )
            # The workers are workloads of alice's, running as her POSIX account.
            first = _workers(svc, "alice", "arr", ["running"])
            assert len(first) == 3, first
            victim = first[0]["id"]

            # Defined here, not at module level: a local function travels by value (the workers
            # do not have this checkout's tests to import it from).
            def _slow_square(x: int) -> int:
                time.sleep(0.3)
                return x * x

            futures = client.map(_slow_square, range(60), pure=False)
            pids = svc.pids(victim)
            assert pids, f"worker {victim} has no process in its cgroup"
            time.sleep(1)
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            # The work finishes: Dask recomputes what the killed worker held.
            try:
                total = sum(client.gather(futures))
            except Exception as e:
                raise AssertionError(f"{svc.show('alice', 'arr', ended=True)}") from e
            assert total == sum(i * i for i in range(60))
            # Its end is recorded, and a replacement runs and is charged.
            dead = wait_for(
                lambda: next(
                    (w for w in _workers(svc, "alice", "arr", ["failed", "stopped"])
                     if w["id"] == victim),
                    None,
                ),
                60,
                what="the killed worker's end",
            )  # fmt: skip
            assert dead["ended_at"], dead
            new = wait_for(
                lambda: [
                    w for w in _workers(svc, "alice", "arr", ["running"])
                    if w["id"] not in {f["id"] for f in first}
                ],
                120,
                what="a replacement worker",
            )  # fmt: skip
            client.wait_for_workers(3, timeout=120)
            with svc.api("alice") as api:
                meter = wait_for(
                    lambda: (
                        (r := api.get(f"workloads/{new[0]['id']}/meter").json())["cost"] > 0 and r
                    ),
                    30,
                    what="the replacement to be charged",
                )
            assert meter["cost_per_hour"] > 0, meter
    finally:
        cluster.close()
    done = _ended(svc, "alice", "arr")
    assert done["state"] == "stopped", done
    assert not _workers(svc, "alice", "arr", ["running", "starting", "pending", "admitted"])


@pytest.mark.timeout(240)
def test_another_user_can_neither_connect_nor_see_nor_steer_nor_open_the_dashboard(
    svc: DaskService,
) -> None:
    cluster = svc.cluster("alice", account="lab", name="mine", workers=1)
    try:
        info = running(svc, "alice", "mine", 1)
        address = str(info["address"])
        assert address.startswith("tls://"), info
        # The owner computes.
        with Client(cluster, set_as_default=False) as own:
            assert own.submit(sum, [1, 2, 3]).result() == 6
        # Another user's client (any certificate but the cluster's) is refused at the TLS
        # handshake; so is a client without TLS.
        with pytest.raises((OSError, TimeoutError)):
            Client(address, security=Security.temporary(), timeout=10, set_as_default=False)
        with pytest.raises((OSError, TimeoutError, ValueError)):
            Client(address.replace("tls://", "tcp://"), timeout=10, set_as_default=False)
        # The same from a process of bob's own POSIX account, and no port of the cluster (the
        # scheduler's comm and dashboard, the worker's comm and HTTP) serves bob anything.
        workloads = [
            info["scheduler"],
            *(w["id"] for w in _workers(svc, "alice", "mine", ["running"])),
        ]
        ports = cluster_ports(pid for w in workloads for pid in svc.pids(int(w)))
        assert len(ports) >= 4, ports
        said = probe_as("bob", svc.python, address, ports)
        assert said == ["refused"] * (1 + 2 * len(ports)), said
        # The API says nothing of it to bob.
        with svc.api("bob") as bob:
            assert all(c["name"] != "mine" for c in bob.get("dask/clusters").json())
            for method, path in [
                ("GET", "dask/clusters/mine"),
                ("GET", "dask/clusters/mine/credentials"),
                ("POST", "dask/clusters/mine/stop"),
                ("POST", "dask/clusters/mine/heartbeat"),
            ]:
                assert bob.request(method, path).status_code == 404, path
            assert bob.post("dask/clusters/mine/scale", json={"workers": 0}).status_code == 404
            assert (
                bob.post("dask/clusters/mine/adapt", json={"minimum": 0, "maximum": 2}).status_code
                == 404
            )
        # Its dashboard, through the service: alice's, not bob's.
        page = svc.url.rstrip("/").rsplit("/services/", 1)[0] + str(info["dashboard_link"])
        for user, status in (("bob", 403), ("alice", 200)):
            r = httpx.get(page, headers={"Authorization": f"token {svc.token(user)}"}, timeout=30)
            assert r.status_code == status, (user, r.status_code, r.text[:300])
        assert svc.show("alice", "mine")["state"] == "running"  # type: ignore[index]
    finally:
        cluster.close()
    _ended(svc, "alice", "mine")


@pytest.mark.timeout(240)
def test_two_clusters_of_one_account_never_exceed_its_quota_together(
    svc: DaskService,
) -> None:
    """carol's account ``tight`` has 3 CPUs and may not borrow. Two clusters: 0.5 CPU each
    scheduler, 0.5 each worker; 3 + 4 workers asked for would be 4.5 CPUs."""
    one = svc.cluster("carol", account="tight", name="one", workers=3)
    two = None
    try:
        running(svc, "carol", "one", 3)
        two = svc.cluster("carol", account="tight", name="two", workers=4)
        running(svc, "carol", "two", 1)
        totals = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ids = [
                w["id"]
                for kind in ("dask-scheduler", "dask-worker")
                for w in svc.workloads("carol", kind, ["running", "starting", "stopping"])
            ]
            totals.append(sum(svc.cpu_limit(i) for i in ids))
            time.sleep(0.5)
        assert max(totals) <= 3.0 + 1e-6, totals
        assert max(totals) == pytest.approx(3.0), totals  # the quota is used, not wasted
        waiting = svc.show("carol", "two")
        assert waiting is not None
        assert (waiting["running"], waiting["requested"]) == (1, 3), waiting
        assert waiting["waiting_reason"], waiting
    finally:
        one.close()
        if two is not None:
            two.close()
    _ended(svc, "carol", "one")
    _ended(svc, "carol", "two")


@pytest.mark.timeout(180)
def test_a_killed_kernel_leaves_no_cluster_after_the_grace(svc: DaskService) -> None:
    """The notebook's process is killed outright: nothing closes the cluster, its heartbeats
    stop, and the service stops it once the owner's grace (20 s here) is over."""
    program = (
        "import os, sys, time\n"
        "from allotment.dask import AllotmentCluster\n"
        "c = AllotmentCluster(profile='dask', account='lab', name='orphan', workers=1,\n"
        "                     python=os.environ['DASK_PYTHON'])\n"
        "print('up', flush=True)\n"
        "time.sleep(600)\n"
    )
    env = clean_env(
        ALLOTMENT_URL=svc.url,
        ALLOTMENT_TOKEN=svc.token("alice"),  # in its environment, never on a command line
        DASK_PYTHON=str(svc.python),
    )
    kernel = subprocess.Popen(
        [sys.executable, "-c", program], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert kernel.stdout is not None
        assert kernel.stdout.readline().strip() == "up"
        assert svc.show("alice", "orphan") is not None
        os.kill(kernel.pid, signal.SIGKILL)
        kernel.wait()
        done = _ended(svc, "alice", "orphan", 90)
    finally:
        if kernel.poll() is None:
            kernel.kill()
            kernel.wait()
    assert done["state"] == "stopped", done
    assert done["reason"], done
    assert svc.show("alice", "orphan") is None  # not among the clusters that have not ended
    assert not _workers(svc, "alice", "orphan", ["running", "starting", "pending", "admitted"])


@pytest.mark.timeout(180)
def test_an_idle_cluster_is_culled_with_the_reason(svc: DaskService) -> None:
    """Made to outlive its notebook (``shutdown_on_close=False``) and left without a client or
    a task: the culler stops it after ``dask.idle_timeout`` (20 s here) and says why."""
    cluster = svc.cluster("bob", account="lab", name="idle", shutdown_on_close=False)
    running(svc, "bob", "idle", 0)
    cluster.close()  # detaches only
    assert svc.show("bob", "idle")["state"] == "running"  # type: ignore[index]
    done = _ended(svc, "bob", "idle", 120)
    assert done["state"] == "stopped", done
    assert "idle" in done["reason"], done
