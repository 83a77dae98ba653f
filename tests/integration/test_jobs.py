"""Batch jobs end to end: a real `allot serve` running workloads on this machine as each hub
user's own POSIX account, driven by the real CLI with tokens from a real JupyterHub."""

from __future__ import annotations

import json
import pwd
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from allotment.installation import name_for
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


@pytest.fixture
def svc(tmp_path: Path, hub: Hub, shared: Path) -> Iterator[JobService]:
    with job_service(free_port(), tmp_path / "data", None, hub.api_url, policy_file(tmp_path)) as s:
        yield s


def submit(s: JobService, token: str, cwd: Path, *args: str) -> int:
    r = s.allot(token, "submit", "--json", *args, cwd=cwd)
    assert r.returncode == 0, r.stderr
    return int(json.loads(r.stdout)["id"])


def test_a_job_runs_as_its_user_and_its_output_and_status_come_back(
    svc: JobService, hub: Hub, shared: Path
) -> None:
    alice = hub.token("alice")
    r = svc.allot(
        alice,
        "submit",
        "--profile",
        "small",
        "--wait",
        "--",
        "sh",
        "-c",
        'echo "hello from $(id -un) in $PWD"; echo oops >&2; exit 3',
        cwd=shared,
    )
    assert r.returncode == 3, r.stdout + r.stderr
    wid = int(r.stdout.split("Submitted job ")[1].split()[0])
    w = workload(svc, alice, wid)
    assert (w["status"], w["exit_code"], w["reason"]) == ("failed", 3, "exited with status 3")
    out = svc.allot(alice, "logs", str(wid))
    assert out.stdout == f"hello from jupyter-alice in {shared}\n"
    assert svc.allot(alice, "logs", str(wid), "--err").stdout == "oops\n"
    assert (shared / f"allot-{wid}.out").stat().st_uid == pwd.getpwnam("jupyter-alice").pw_uid
    # Someone else may not read it, even through the service.
    denied = svc.allot(hub.token("bob"), "logs", str(wid))
    assert denied.returncode == 1 and "no workload" in denied.stderr.lower()
    listed = svc.allot(alice, "jobs")
    assert str(wid) in listed.stdout and "failed" in listed.stdout


def test_a_script_is_snapshotted_at_submission(svc: JobService, hub: Hub, shared: Path) -> None:
    """As sbatch: editing the script after submitting changes nothing. (The CLI here runs as
    root, not as alice, so the job itself is not run: its copy is in root's home.)"""
    alice = hub.token("alice")
    script = shared / "job.sh"
    script.write_text("#!/bin/sh\necho first version\n")
    script.chmod(0o755)
    blocker = submit(svc, alice, shared, "--profile", "small", "--", "sleep", "300")
    wid = submit(
        svc, alice, shared, "--profile", "small", "--after", str(blocker), "--", str(script)
    )
    script.write_text("#!/bin/sh\necho edited\n")
    command = workload(svc, alice, wid)["command"]
    assert isinstance(command, list) and len(command) == 1
    assert Path(command[0]).read_text() == "#!/bin/sh\necho first version\n"
    assert Path(command[0]).parent == Path.home() / ".allotment" / "scripts"
    svc.allot(alice, "cancel", str(blocker))


def test_the_queue_shows_place_and_expected_start_and_cancel_stops(
    svc: JobService, hub: Hub, shared: Path
) -> None:
    bob = hub.token("bob")
    running = [submit(svc, bob, shared, "-p", "small", "--", "sleep", "300") for _ in range(2)]
    waiting = [submit(svc, bob, shared, "-p", "small", "-t", "10m", "--", "true") for _ in range(3)]
    for wid in running:
        wait_for(lambda w=wid: workload(svc, bob, w)["status"] == "running", what="running")
    shown = wait_for(
        lambda: (
            all(workload(svc, bob, w)["expected_start"] for w in waiting)
            and [workload(svc, bob, w) for w in waiting]
        ),
        what="expected starts",
    )
    assert [w["position"] for w in shown] == [1, 2, 3]
    assert all("free up" in str(w["reason"]) for w in shown)
    r = svc.allot(bob, "cancel", *map(str, running))
    assert r.returncode == 0, r.stderr
    for wid in running:
        w = ended(svc, bob, wid)
        assert (w["status"], w["reason"]) == ("stopped", "cancelled by bob")
        assert not cgroup_left(wid, svc.data)
    for wid in waiting:  # the freed CPUs go to the queue
        assert ended(svc, bob, wid)["exit_code"] == 0


def test_dependencies_wait_for_success(svc: JobService, hub: Hub, shared: Path) -> None:
    carol = hub.token("carol")
    first = submit(
        svc, carol, shared, "-p", "small", "--", "sh", "-c", f"sleep 1; date +%s.%N > {shared}/a"
    )
    then = submit(
        svc,
        carol,
        shared,
        "-p",
        "small",
        "--after",
        str(first),
        "--",
        "sh",
        "-c",
        f"date +%s.%N > {shared}/b",
    )
    bad = submit(svc, carol, shared, "-p", "small", "--", "false")
    never = submit(svc, carol, shared, "-p", "small", "--after", str(bad), "--", "true")
    assert ended(svc, carol, then)["exit_code"] == 0
    assert float((shared / "b").read_text()) > float((shared / "a").read_text())
    w = ended(svc, carol, never)
    assert w["status"] == "failed"
    assert f"workload {bad}, which it runs after, did not end successfully" in str(w["reason"])
    assert w["started_at"] is None


def test_a_1000_task_array_drains_within_capacity(svc: JobService, hub: Hub, shared: Path) -> None:
    alice = hub.token("alice")
    limit_cpu, limit_mem = 2 * 100_000, 4 * 2**30
    worst = {"cpu": 0, "mem": 0}
    stop = threading.Event()

    def sample() -> None:
        """Sum the limits of the groups that hold processes (a group being made has none)."""
        base = Path("/sys/fs/cgroup")
        mine = f"allotment/{name_for(svc.data)}"  # this installation's groups
        while not stop.is_set():
            cpu = mem = 0
            for d in (base / "memory" / mine).glob("w*"):
                try:
                    if not (d / "cgroup.procs").read_text().strip():
                        continue
                    mem += int((d / "memory.limit_in_bytes").read_text())
                    cpu += int((base / "cpu" / mine / d.name / "cpu.cfs_quota_us").read_text())
                except (OSError, ValueError):
                    continue
            worst["cpu"], worst["mem"] = max(worst["cpu"], cpu), max(worst["mem"], mem)
            stop.wait(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        r = svc.allot(
            alice,
            "submit",
            "-p",
            "small",
            "--cpus",
            "0.1",
            "--mem",
            "32M",
            "--array",
            "0-999",
            "--output",
            "/dev/null",
            "--wait",
            "--",
            "sh",
            "-c",
            f'echo "$ALLOT_ARRAY_TASK_ID" > {shared}/task-$ALLOT_ARRAY_TASK_ID',
            cwd=shared,
        )
    finally:
        stop.set()
        sampler.join()
    assert r.returncode == 0, r.stdout + r.stderr
    done = sorted(int(p.name.split("-")[1]) for p in shared.glob("task-*"))
    assert done == list(range(1000))
    assert 0 < worst["cpu"] <= limit_cpu, worst
    assert 0 < worst["mem"] <= limit_mem, worst


def test_a_workload_past_its_maximum_runtime_is_stopped(
    tmp_path: Path, hub: Hub, shared: Path
) -> None:
    with job_service(
        free_port(), tmp_path / "data", None, hub.api_url, policy_file(tmp_path, max_runtime="2s")
    ) as s:
        alice = hub.token("alice")
        wid = submit(s, alice, shared, "-p", "small", "--", "sleep", "300")
        w = ended(s, alice, wid, seconds=30)
    assert w["status"] == "stopped"
    assert w["reason"] == "reached its maximum runtime (2s)"
    assert not cgroup_left(wid, tmp_path / "data")


def test_no_process_outlives_its_users_jobs(svc: JobService, hub: Hub, shared: Path) -> None:
    """A job that daemonises a child: once it ends, nothing of it is left running. (As a user
    no other test runs anything as, so that any process of theirs is this job's.)"""
    token = hub.token("outlives")
    wid = submit(svc, token, shared, "-p", "small", "--", "sh", "-c", "setsid sleep 300 & exit 0")
    assert ended(svc, token, wid)["exit_code"] == 0
    wait_for(lambda: not cgroup_left(wid, svc.data), 10, what="the control groups to go")
    uid = pwd.getpwnam("jupyter-outlives").pw_uid
    wait_for(
        lambda: not processes_of(uid),
        10,
        what="jupyter-outlives's processes to go",
    )
