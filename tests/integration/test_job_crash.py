"""Kill -9 the service at each step of a workload's life, restart it, and check that the
workload was neither lost nor run twice, and that nothing of it is left running untracked.

The service kills itself at the named step (``ALLOTMENT_FAILPOINT``, see
``controller/failpoints.py``), exactly as a power cut would stop it there. Both databases.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.backends.conftest import ROOT
from tests.support.hub import Hub, free_port
from tests.support.jobs import (
    cgroup_left,
    ended,
    job_service,
    policy_file,
    wait_for,
    workload,
)

pytestmark = [
    pytest.mark.jupyterhub,
    pytest.mark.skipif(not ROOT, reason="runs workloads as other POSIX accounts: needs root"),
]

#: Steps on the way to running: (failpoint, what was durable when the service died).
STARTING = ["admitted", "placing", "starting", "launched", "running", "ended"]
#: Steps on the way to stopping a running workload.
STOPPING = ["stopping", "stopped"]


def _died(proc: subprocess.Popen[str]) -> None:
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        raise AssertionError("the failpoint was never reached") from None
    assert proc.returncode == -9


def _nothing_left(data: Path, wid: int) -> None:
    wait_for(lambda: not cgroup_left(wid, data), 10, what="its control groups to go")
    runs = data / "local" / "run"
    wait_for(lambda: not list(runs.glob(f"w{wid}.*")), 10, what="its run records to go")


@pytest.mark.parametrize("step", ["pending", *STARTING])
def test_killed_on_the_way_to_running(
    step: str, database_url: str, tmp_path: Path, hub: Hub, shared: Path
) -> None:
    data, policy, port = tmp_path / "data", policy_file(tmp_path), free_port()
    alice = hub.token("alice")
    runs = shared / "runs"
    body = {
        "profile": "small",
        "command": ["sh", "-c", f"echo run >> {runs}; sleep 1"],
        "workdir": str(shared),
    }
    args = ("--no-controller",) if step == "pending" else ()
    with job_service(
        port,
        data,
        database_url,
        hub.api_url,
        policy,
        *args,
        failpoint="" if step == "pending" else step,
    ) as s:
        with s.client(alice) as c:
            wid = int(c.post("workloads", json=body).json()["id"])
        if step == "pending":
            time.sleep(0.5)
            s.proc.kill()
        _died(s.proc)
    with job_service(port, data, database_url, hub.api_url, policy) as s:
        w = ended(s, alice, wid)
    assert (w["status"], w["exit_code"]) == ("stopped", 0), w["reason"]
    assert runs.read_text() == "run\n", "the workload ran once, not zero or two times"
    _nothing_left(data, wid)


@pytest.mark.parametrize("step", STOPPING)
def test_killed_while_stopping(
    step: str, database_url: str, tmp_path: Path, hub: Hub, shared: Path
) -> None:
    data, policy, port = tmp_path / "data", policy_file(tmp_path), free_port()
    alice = hub.token("alice")
    marker = shared / "alive"
    body = {
        "profile": "small",
        "command": ["sh", "-c", f"while true; do touch {marker}; sleep 0.2; done"],
        "workdir": str(shared),
    }
    with job_service(port, data, database_url, hub.api_url, policy, failpoint=step) as s:
        with s.client(alice) as c:
            wid = int(c.post("workloads", json=body).json()["id"])
            wait_for(lambda: workload(s, alice, wid)["status"] == "running", what="running")
            assert c.post(f"workloads/{wid}/cancel").status_code == 200
        _died(s.proc)
    with job_service(port, data, database_url, hub.api_url, policy) as s:
        w = ended(s, alice, wid)
    assert (w["status"], w["reason"]) == ("stopped", "cancelled by alice"), w
    _nothing_left(data, wid)
    marker.unlink(missing_ok=True)
    time.sleep(0.5)
    assert not marker.exists(), "the workload is still running"


def test_a_workload_the_database_forgot_is_reaped(tmp_path: Path, hub: Hub, shared: Path) -> None:
    """Processes of a workload the service has no active record of (say, the database was
    restored from a backup) are stopped at start-up: nothing runs untracked."""
    data, policy, port = tmp_path / "data", policy_file(tmp_path), free_port()
    alice = hub.token("alice")
    body = {"profile": "small", "command": ["sleep", "300"], "workdir": str(shared)}
    with job_service(port, data, None, hub.api_url, policy) as s:
        with s.client(alice) as c:
            wid = int(c.post("workloads", json=body).json()["id"])
        wait_for(lambda: workload(s, alice, wid)["status"] == "running", what="running")
        s.proc.kill()
        s.proc.wait()
    (data / "allotment.sqlite").unlink()
    for extra in ("allotment.sqlite-wal", "allotment.sqlite-shm"):
        (data / extra).unlink(missing_ok=True)
    assert cgroup_left(wid, data)
    with job_service(port, data, None, hub.api_url, policy):
        _nothing_left(data, wid)
