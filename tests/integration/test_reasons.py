"""Reasons that say what happened at a job's end: a real `allot serve` running jobs as a hub
user's own POSIX account, in cgroups.

A cancelled job that ignores SIGTERM is killed after the grace period (2 s in this policy), and
its reason says so after who cancelled it; a job that leaves daemons behind completes, they are
killed at its end, and its reason says how many. The user, dean, runs nothing in any other
test: "none of dean's processes is left" means nothing of these jobs is left.
"""

from __future__ import annotations

import json
import pwd
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backends.conftest import ROOT
from tests.support.hub import Hub, free_port
from tests.support.jobs import (
    JobService,
    cgroup_left,
    ended,
    job_service,
    policy_file,
    processes_of,
    wait_for,
    workload,
)

pytestmark = [
    pytest.mark.jupyterhub,
    pytest.mark.skipif(not ROOT, reason="runs workloads as other POSIX accounts: needs root"),
]

USER = "reasons"  # no other test runs anything as this user (tests/conftest.py)


@pytest.fixture
def svc(tmp_path: Path, hub: Hub) -> Iterator[JobService]:
    policy = policy_file(tmp_path)
    policy.write_text(policy.read_text().replace("[alice, bob, carol, outlives]", f"[{USER}]"))
    with job_service(free_port(), tmp_path / "data", None, hub.api_url, policy) as s:
        yield s


def _submit(s: JobService, token: str, cwd: Path, command: str) -> int:
    r = s.allot(token, "submit", "--json", "-p", "small", "--", "sh", "-c", command, cwd=cwd)
    assert r.returncode == 0, r.stderr
    return int(json.loads(r.stdout)["id"])


def _nothing_left(s: JobService, wid: int) -> None:
    wait_for(lambda: not cgroup_left(wid, s.data), 10, what="its control groups to go")
    uid = pwd.getpwnam(f"jupyter-{USER}").pw_uid
    assert processes_of(uid) == [], "nothing of the job is left running"


def test_a_cancelled_job_that_ignored_sigterm_says_it_was_killed_after_the_grace_period(
    svc: JobService, hub: Hub, shared: Path
) -> None:
    token = hub.token(USER)
    wid = _submit(svc, token, shared, "trap '' TERM; sleep 1000")
    wait_for(lambda: workload(svc, token, wid)["status"] == "running", what="running")
    r = svc.allot(token, "cancel", str(wid))
    assert r.returncode == 0, r.stderr
    w = ended(svc, token, wid)
    assert (w["status"], w["reason"]) == (
        "stopped",
        f"cancelled by {USER}; it did not stop on SIGTERM and was killed after the 2 s grace "
        "period",
    ), w
    _nothing_left(svc, wid)


def test_a_job_that_left_daemons_behind_says_how_many_were_killed(
    svc: JobService, hub: Hub, shared: Path
) -> None:
    token = hub.token(USER)
    daemons = "for i in 1 2 3; do setsid nohup sleep 1000 >/dev/null 2>&1 & done; exit 0"
    wid = _submit(svc, token, shared, daemons)
    w = ended(svc, token, wid)
    assert (w["status"], w["exit_code"], w["reason"]) == (
        "stopped",
        0,
        "completed (exit status 0); 3 leftover processes were killed at its end",
    ), w
    _nothing_left(svc, wid)
