"""A full data directory never rewrites a job's outcome: a real `allot serve` whose data
directory is a small real ext4 file system (a loop device) the test fills and frees, its
database elsewhere (both kinds), jobs run as a hub user's own POSIX account.

Jobs that exit 0 while the disk is full are recorded as completed with exit status 0, and a
job waiting on one with ``--after`` runs; jobs admitted while it is full wait (not failed) and
run once room is back. Each job appends its id to a file outside the full disk: each runs once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backends.conftest import ROOT
from tests.support.hub import Hub, free_port
from tests.support.jobs import JobService, ended, job_service, policy_file, wait_for, workload
from tests.support.loopfs import fill, free, small_filesystem

pytestmark = [
    pytest.mark.jupyterhub,
    pytest.mark.skipif(not ROOT, reason="runs workloads as other POSIX accounts: needs root"),
]


@pytest.fixture
def disk() -> Iterator[Path]:
    with small_filesystem(32) as mountpoint:
        yield mountpoint


@pytest.fixture
def svc(database_url: str, tmp_path: Path, hub: Hub, disk: Path) -> Iterator[JobService]:
    policy = policy_file(tmp_path)
    with job_service(free_port(), disk / "data", database_url, hub.api_url, policy) as s:
        try:
            yield s
        finally:
            free(disk)


def _submit(s: JobService, token: str, shared: Path, command: str) -> int:
    body = {
        "profile": "small",
        "cpus": 0.1,
        "memory": "32M",
        "command": ["sh", "-c", command],
        "workdir": str(shared),
    }
    with s.client(token) as c:
        r = c.post("workloads", json=body)
        assert r.status_code == 201, r.text
        return int(r.json()["id"])


def _ran_once(runs: Path, wids: list[int]) -> None:
    assert sorted(map(int, runs.read_text().split())) == sorted(wids), "each ran exactly once"


def test_jobs_that_exit_0_on_a_full_disk_are_recorded_so_and_their_dependant_runs(
    svc: JobService, hub: Hub, shared: Path, disk: Path
) -> None:
    alice = hub.token("alice")
    go, runs = shared / "go", shared / "runs"
    job = f'while [ ! -e {go} ]; do sleep 0.05; done; echo "$ALLOT_JOB_ID" >> {runs}'
    wids = [_submit(svc, alice, shared, job) for _ in range(10)]
    for wid in wids:
        wait_for(lambda w=wid: workload(svc, alice, w)["status"] == "running", what="running")
    r = svc.allot(alice, "submit", "--json", "-p", "small", "--cpus", "0.1", "--mem", "32M",
                  "--after", str(wids[0]), "--", "sh", "-c", f'echo "$ALLOT_JOB_ID" >> {runs}',
                  cwd=shared)  # fmt: skip
    assert r.returncode == 0, r.stderr
    dependant = int(json.loads(r.stdout)["id"])
    fill(disk)
    go.touch()
    for wid in wids:
        w = ended(svc, alice, wid)
        assert (w["status"], w["exit_code"], w["reason"]) == (
            "stopped",
            0,
            "completed (exit status 0)",
        ), w
    # Its start waits for room (the disk is still full), and is not failed meanwhile.
    # It starts once the others' released records leave it room (or waits for room).
    w = ended(svc, alice, dependant)
    assert (w["status"], w["exit_code"]) == ("stopped", 0), w
    _ran_once(runs, [*wids, dependant])


def test_jobs_admitted_while_the_disk_is_full_wait_then_run(
    svc: JobService, hub: Hub, shared: Path, disk: Path
) -> None:
    alice = hub.token("alice")
    runs = shared / "runs"
    fill(disk)
    wids = [_submit(svc, alice, shared, f'echo "$ALLOT_JOB_ID" >> {runs}') for _ in range(10)]
    wait_for(
        lambda: all(workload(svc, alice, w)["status"] == "admitted" for w in wids),
        what="all admitted, waiting for room",
    )
    time.sleep(3)  # long enough for many tries to start them: they wait, none fails
    assert {workload(svc, alice, w)["status"] for w in wids} == {"admitted"}
    free(disk)
    for wid in wids:
        w = ended(svc, alice, wid)
        assert (w["status"], w["exit_code"], w["reason"]) == (
            "stopped",
            0,
            "completed (exit status 0)",
        ), w
    _ran_once(runs, wids)
