"""The real Slurm cluster the Slurm tests run on (``slurm_cluster``): three nodes that are
three hosts to their jobs, associations enforced, a killed node fails its job, and slurmctld
can stop and start under a running job."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.slurm import SlurmCluster

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def posix_user() -> Iterator[str]:
    """A fresh POSIX account (slurmd resolves job owners in /etc/passwd)."""
    name = "slt" + uuid.uuid4().hex[:8]
    subprocess.run(["/usr/sbin/useradd", "--no-create-home", "--", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["/usr/sbin/userdel", "--", name], check=False)


def _job_state(c: SlurmCluster, job: str) -> str:
    out = c.run("scontrol", "show", "job", "-o", job, check=False)
    for word in out.split():
        if word.startswith("JobState="):
            return word.split("=", 1)[1]
    return ""


def _wait_job(c: SlurmCluster, job: str, states: set[str], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = _job_state(c, job)
        if state in states:
            return state
        time.sleep(0.2)
    raise TimeoutError(f"job {job} is {state!r}, not one of {sorted(states)}")


def _sacct_state(c: SlurmCluster, job: str) -> str:
    out = c.run("sacct", "-n", "-P", "-X", "-D", "-j", job, "-S", "now-1hour", "-o", "State")
    return out.split()[0] if out.split() else ""


def test_every_node_is_idle_and_a_host_of_its_own(slurm_cluster: SlurmCluster) -> None:
    c = slurm_cluster
    assert c.nodes == ["n1", "n2", "n3"]
    c.wait_idle()
    assert all(c.node_state(n) == "idle" for n in c.nodes)
    names = c.run("srun", "-N3", "-D", "/var/tmp", "hostname").split()
    assert sorted(names) == ["n1", "n2", "n3"]
    assert f"ClusterName             = {c.cluster}" in c.run("scontrol", "show", "config")


def test_only_a_user_with_an_association_may_submit(
    slurm_cluster: SlurmCluster, posix_user: str
) -> None:
    c = slurm_cluster
    account = "acct" + uuid.uuid4().hex[:6]
    wrap = ["sbatch", "--parsable", "-D", "/var/tmp", "-o", "/dev/null", "-A", account]
    with pytest.raises(subprocess.CalledProcessError) as refused:
        c.run(*wrap, "--wrap", "true", user=posix_user)
    assert "Invalid account" in refused.value.stderr
    c.add_association(posix_user, account)
    c.add_association(posix_user, account)  # idempotent
    job = c.run(*wrap, "--wrap", "true", user=posix_user).strip()
    assert _wait_job(c, job, {"COMPLETED", "FAILED"}) == "COMPLETED"
    owner = c.run("squeue", "-h", "-t", "all", "-j", job, "-o", "%u|%a").strip()
    assert owner == f"{posix_user}|{account}"


def test_a_killed_node_goes_down_and_fails_its_job(slurm_cluster: SlurmCluster) -> None:
    c = slurm_cluster
    sleep = f"sleep 600.{uuid.uuid4().int % 10**6}"  # a command line no other process has
    job = c.run(
        "sbatch", "--parsable", "-w", "n3", "--no-requeue", "-D", "/var/tmp", "-o", "/dev/null",
        "--wrap", sleep,
    ).strip()  # fmt: skip
    _wait_job(c, job, {"RUNNING"})
    started = time.monotonic()
    c.kill_node("n3")
    try:
        assert c.wait_node("n3", {"down*"}, timeout=90) == "down*"
        down_after = time.monotonic() - started
        assert _wait_job(c, job, {"NODE_FAIL"}, timeout=30) == "NODE_FAIL"
        # Nothing of the job is left on the machine.
        left = subprocess.run(["pgrep", "-f", sleep], capture_output=True, text=True)
        assert not left.stdout.strip()
    finally:
        c.start_node("n3")
    c.resume("n3")
    c.wait_node("n3", {"idle"}, timeout=60)
    deadline = time.monotonic() + 30
    while _sacct_state(c, job) != "NODE_FAIL" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _sacct_state(c, job) == "NODE_FAIL"
    assert down_after < 60


def test_a_job_outlives_a_restart_of_slurmctld(slurm_cluster: SlurmCluster) -> None:
    c = slurm_cluster
    marker = Path("/var/tmp") / f"slurm-smoke-{uuid.uuid4().hex[:8]}"
    job = c.run(
        "sbatch", "--parsable", "-D", "/var/tmp", "-o", "/dev/null",
        "--wrap", f"sleep 4; touch {marker}",
    ).strip()  # fmt: skip
    _wait_job(c, job, {"RUNNING"})
    c.stop_controller()
    try:
        with pytest.raises(subprocess.CalledProcessError):
            c.run("squeue", timeout=30)
        deadline = time.monotonic() + 20
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists()  # the job ran on while no controller was there
    finally:
        c.start_controller()
        marker.unlink(missing_ok=True)
    assert _wait_job(c, job, {"COMPLETED", "FAILED"}) == "COMPLETED"


def test_a_second_cluster_with_gpus_runs_beside_the_first(
    slurm_cluster: SlurmCluster, shared: Path
) -> None:
    from tests.support.slurm import start_cluster, stop_cluster

    c = start_cluster(nodes=1, gpus=2, accounting=False)
    try:
        assert c.port_base != slurm_cluster.port_base and c.cluster != slurm_cluster.cluster
        assert c.run("sinfo", "-h", "-N", "-o", "%N %G").split()[:2] == ["n1", "gpu:2"]
        out = shared / "gpus"
        job = c.run(
            "sbatch", "--parsable", "--gres=gpu:2", "-D", str(shared), "-o", str(out),
            "--wrap", "echo $CUDA_VISIBLE_DEVICES",
        ).strip()  # fmt: skip
        assert _wait_job(c, job, {"COMPLETED", "FAILED"}) == "COMPLETED"
        assert out.read_text().strip() == "0,1"
        with pytest.raises(subprocess.CalledProcessError) as refused:
            c.run("sbatch", "--test-only", "--gres=gpu:3", "--wrap", "true")
        assert "Requested node configuration is not available" in refused.value.stderr
        slurm_cluster.wait_idle()  # the first one is untouched
    finally:
        stop_cluster(c)
