"""`allot serve` runs the API in its process and the controller in a child of its own.

The child is started again when it fails, stops with the service (however the service ends),
and a second service of the same installation waits with its controller until the first one's
ends, then takes over. Submissions reach the controller through the nudge pipe. Both
databases, real processes, real jobs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from allotment.installation import name_for
from tests.backends.conftest import ROOT
from tests.support.hub import Hub, free_port
from tests.support.jobs import JobService, job_service, policy_file, wait_for, workload
from tests.support.process import clean_env

pytestmark = [
    pytest.mark.jupyterhub,
    pytest.mark.skipif(not ROOT, reason="runs workloads as other POSIX accounts: needs root"),
]


def controllers_of(service: int) -> list[int]:
    """The controller processes whose parent is the `allot serve` process ``service``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == service and b"allotment.controller" in cmdline:
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def submit(s: JobService, token: str, seconds: int = 60) -> int:
    with s.client(token) as c:
        r = c.post("workloads", json={"profile": "small", "command": ["sleep", str(seconds)]})
        assert r.status_code == 201, r.text
        return int(r.json()["id"])


def running(s: JobService, token: str, wid: int) -> None:
    wait_for(lambda: workload(s, token, wid)["status"] == "running", 30, what=f"{wid} to run")


def cancel(s: JobService, token: str, *wids: int) -> None:
    with s.client(token) as c:
        for wid in wids:
            c.post(f"workloads/{wid}/cancel")
    for wid in wids:
        wait_for(
            lambda w=wid: workload(s, token, w)["status"] == "stopped", 30, what=f"{wid} to stop"
        )


def test_the_controller_has_a_process_of_its_own_started_again_when_it_dies(
    database_url: str, tmp_path: Path, hub: Hub
) -> None:
    alice = hub.token("alice")
    data, policy = tmp_path / "data", policy_file(tmp_path)
    with job_service(free_port(), data, database_url, hub.api_url, policy) as s:
        (first,) = controllers_of(s.proc.pid)
        one = submit(s, alice)
        running(s, alice, one)
        os.kill(first, signal.SIGKILL)
        (second,) = wait_for(
            lambda: [p for p in controllers_of(s.proc.pid) if p != first],
            30,
            what="the controller to be started again",
        )
        two = submit(s, alice)
        running(s, alice, two)
        assert workload(s, alice, one)["status"] == "running"  # found again, not restarted
        cancel(s, alice, one, two)
        s.proc.send_signal(signal.SIGTERM)
        s.proc.wait(30)
        # Stopped with the service, as asked: not left behind, not killed.
        wait_for(lambda: not alive(second), 30, what="the controller to stop with the service")


def test_a_service_killed_takes_its_controller_with_it(
    database_url: str, tmp_path: Path, hub: Hub
) -> None:
    alice = hub.token("alice")
    data, policy, port = tmp_path / "data", policy_file(tmp_path), free_port()
    with job_service(port, data, database_url, hub.api_url, policy) as s:
        (child,) = controllers_of(s.proc.pid)
        wid = submit(s, alice)
        running(s, alice, wid)
        s.proc.kill()
        s.proc.wait()
        wait_for(lambda: not alive(child), 30, what="the controller to go with its service")
    with job_service(port, data, database_url, hub.api_url, policy) as s:
        assert workload(s, alice, wid)["status"] == "running"
        cancel(s, alice, wid)


def test_a_second_service_of_an_installation_waits_then_takes_over(
    database_url: str, tmp_path: Path, hub: Hub
) -> None:
    alice = hub.token("alice")
    data, policy = tmp_path / "data", policy_file(tmp_path)
    with job_service(free_port(), data, database_url, hub.api_url, policy) as first:
        with job_service(free_port(), data, database_url, hub.api_url, policy) as second:
            assert controllers_of(second.proc.pid), "the second one's controller waits"
            # Taken by the second service's API, run by the first one's controller: the
            # submission reached it through the nudge pipe (the interval alone is 1 s here).
            one = submit(second, alice)
            running(second, alice, one)
            first.proc.send_signal(signal.SIGTERM)
            first.proc.wait(30)
            two = submit(second, alice)
            running(second, alice, two)  # the second one's controller took over
            cancel(second, alice, one, two)


def test_a_controller_that_cannot_start_fails_the_service_with_the_reason(
    tmp_path: Path, hub: Hub
) -> None:
    # Another installation holds the name: nothing may start under it.
    data, policy = tmp_path / "data", policy_file(tmp_path)
    with job_service(free_port(), data, None, hub.api_url, policy):
        other = tmp_path / "other"
        env = clean_env(ALLOTMENT_DATA_DIR=str(other), ALLOTMENT_INSTALLATION=name_for(data))
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "allotment",
                "serve",
                "-c",
                str(policy),
                "--port",
                str(free_port()),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert r.returncode != 0
    assert "the controller could not start" in r.stdout + r.stderr, r.stdout + r.stderr
