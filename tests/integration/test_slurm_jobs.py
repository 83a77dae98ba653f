"""Batch jobs on a Slurm pool end to end: a real `allot serve` whose pool is the partition of a
real three-node Slurm cluster (``slurm_cluster``), driven by the real CLI with tokens from a real
JupyterHub. Each job is checked where Slurm keeps it (``sacct``): the POSIX account that
submitted it, its Slurm account and partition, its nodes; and where the researcher reads it
(``allot jobs``, ``allot logs``, the workload's status, exit code and reason).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import pytest

from allotment.backends.slurm.names import job_name
from allotment.installation import name_for
from tests.backends.conftest import ROOT
from tests.support.hub import Hub, free_port
from tests.support.jobs import JobService, ended, job_service, wait_for, workload
from tests.support.slurm import SlurmCluster

pytestmark = [
    pytest.mark.jupyterhub,
    pytest.mark.skipif(not ROOT, reason="submits jobs as other POSIX accounts: needs root"),
]

POLICY = """\
slurm:
  conf: {conf}
  poll_interval: 1s
accounts:
  lab:
    members: [alice, bob, carol]
pools:
  cluster:
    backend: slurm
    partition: {partition}
    nodes:
{nodes}
    rates: {{cpu: 3600}}
profiles:
  small:
    pool: cluster
    size: {{cpus: 1, memory: 256M}}
    options: {{cpus: {{min: 0.1, max: 2}}, memory_gib: {{min: 0.03, max: 4}}}}
    max_runtime: 1h
scheduling: {{stop_grace: 2s, interval: 1s, estimate_interval: 1s}}
accounting: {{interval: 1s, entry: 1m}}
"""


def slurm_policy(directory: Path, cluster: SlurmCluster) -> Path:
    """A policy whose one pool, ``cluster``, is the cluster's partition with its nodes as
    declared (2 CPUs, 4 GiB each: what ``start_cluster`` gives them)."""
    nodes = "\n".join(f"      - {{name: {n}, cpus: 2, memory: 4G}}" for n in cluster.nodes)
    path = directory / "slurm.yaml"
    path.write_text(POLICY.format(conf=cluster.conf, partition=cluster.partition, nodes=nodes))
    return path


@contextmanager
def slurm_service(
    directory: Path, hub: Hub, cluster: SlurmCluster, database_url: str | None = None
) -> Iterator[JobService]:
    """`allot serve` (SQLite in its data directory unless ``database_url``) on the cluster."""
    directory.mkdir(parents=True, exist_ok=True)
    policy = slurm_policy(directory, cluster)
    with job_service(
        free_port(), directory / "data", database_url, hub.api_url, policy, start_within=120
    ) as s:
        # As an administrator deploys it: applying the policy mirrors its accounts and members
        # into Slurm's accounting (the controller's mirror would, within its interval).
        admin = (s.data / "admin-token").read_text().strip()
        applied = s.allot(admin, "config", "apply", str(policy))
        assert applied.returncode == 0, applied.stdout + applied.stderr
        yield s


def submit(s: JobService, token: str, cwd: Path, *args: str) -> int:
    r = s.allot(token, "submit", "--json", *args, cwd=cwd)
    assert r.returncode == 0, r.stdout + r.stderr
    return int(json.loads(r.stdout)["id"])


def _at(text: object) -> float:
    return datetime.fromisoformat(str(text)).timestamp()


def sacct(cluster: SlurmCluster, s: JobService, wid: int) -> list[dict[str, str]]:
    """Slurm's accounting records of the workload's job(s) (allocation lines only)."""
    fields = "JobID,JobName,User,Account,Partition,State,ExitCode,NNodes,NodeList"
    out = cluster.run(
        "sacct", "-X", "-n", "-P", "-S", "now-2hours", "--name",
        job_name(name_for(s.data), wid), "-o", fields,
    )  # fmt: skip
    names = fields.split(",")
    return [dict(zip(names, line.split("|"), strict=True)) for line in out.splitlines() if line]


@pytest.fixture(scope="module")
def svc(
    tmp_path_factory: pytest.TempPathFactory, hub: Hub, slurm_cluster: SlurmCluster
) -> Iterator[JobService]:
    with slurm_service(tmp_path_factory.mktemp("slurm-jobs"), hub, slurm_cluster) as s:
        yield s


def test_a_job_runs_as_its_user_in_its_slurm_account_and_partition(
    svc: JobService, hub: Hub, shared: Path, slurm_cluster: SlurmCluster
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
        'echo "$(id -un) $SLURM_JOB_ACCOUNT $SLURM_JOB_PARTITION $PWD"; echo oops >&2; exit 3',
        cwd=shared,
    )
    assert r.returncode == 3, r.stdout + r.stderr
    wid = int(r.stdout.split("Submitted job ")[1].split()[0])
    w = workload(svc, alice, wid)
    assert (w["status"], w["exit_code"], w["reason"]) == ("failed", 3, "exited with status 3")
    assert w["node"] in slurm_cluster.nodes
    assert svc.allot(alice, "logs", str(wid)).stdout == f"jupyter-alice lab main {shared}\n"
    assert svc.allot(alice, "logs", str(wid), "--err").stdout == "oops\n"
    (job,) = wait_for(lambda: sacct(slurm_cluster, svc, wid), 30, what="sacct to know it")
    assert (job["User"], job["Account"], job["Partition"]) == ("jupyter-alice", "lab", "main")
    assert (job["State"], job["ExitCode"]) == ("FAILED", "3:0")
    assert job["NodeList"] == w["node"]
    listed = svc.allot(alice, "jobs")
    assert str(wid) in listed.stdout and "failed" in listed.stdout


def test_an_array_of_five_runs_each_task_with_its_index_and_output(
    svc: JobService, hub: Hub, shared: Path
) -> None:
    bob = hub.token("bob")
    first = submit(
        svc, bob, shared, "-p", "small", "--array", "0-4", "--",
        "sh", "-c", 'echo "task $ALLOT_ARRAY_TASK_ID on $(hostname)"',
    )  # fmt: skip
    with svc.client(bob) as c:
        tasks = c.get("workloads", params={"array": first, "limit": 10}).json()["items"]
    assert sorted(t["array_index"] for t in tasks) == [0, 1, 2, 3, 4]
    for t in tasks:
        w = ended(svc, bob, t["id"], 120)
        assert (w["status"], w["exit_code"]) == ("stopped", 0), w
        out = (shared / f"allot-{first}_{t['array_index']}.out").read_text()
        assert out == f"task {t['array_index']} on {w['node']}\n"


def test_after_waits_for_the_first_job_to_end_successfully(
    svc: JobService, hub: Hub, shared: Path
) -> None:
    carol = hub.token("carol")
    first = submit(svc, carol, shared, "-p", "small", "--", "sh", "-c", "sleep 4; echo one > a")
    second = submit(
        svc, carol, shared, "-p", "small", "--after", str(first), "--", "sh", "-c", "cat a"
    )
    waiting = wait_for(
        lambda: (x := workload(svc, carol, second))["reason"] and x, 30, what="its reason"
    )
    assert waiting["status"] == "pending", waiting
    assert waiting["reason"] == f"waiting for workload {first} to end successfully"
    a, b = ended(svc, carol, first, 120), ended(svc, carol, second, 120)
    assert a["exit_code"] == 0 and b["exit_code"] == 0, (a, b)
    assert str(b["started_at"]) >= str(a["ended_at"])
    assert svc.allot(carol, "logs", str(second)).stdout == "one\n"


def test_two_nodes_run_one_srun_task_on_each(
    svc: JobService, hub: Hub, shared: Path, slurm_cluster: SlurmCluster
) -> None:
    alice = hub.token("alice")
    wid = submit(
        svc, alice, shared, "-p", "small", "--nodes", "2", "--cpus", "1",
        "--", "srun", "hostname",
    )  # fmt: skip
    w = ended(svc, alice, wid, 120)
    assert (w["status"], w["exit_code"], w["nodes"]) == ("stopped", 0, 2), w
    hosts = svc.allot(alice, "logs", str(wid)).stdout.split()
    assert len(hosts) == 2 and len(set(hosts)) == 2 and set(hosts) <= set(slurm_cluster.nodes)
    (job,) = wait_for(lambda: sacct(slurm_cluster, svc, wid), 30, what="sacct to know it")
    assert job["NNodes"] == "2"
    # The size is per node, as in Slurm: the workload holds (and is charged) both.
    assert w["cpus"] == 2


def test_cancel_cancels_the_slurm_job(
    svc: JobService, hub: Hub, shared: Path, slurm_cluster: SlurmCluster
) -> None:
    bob = hub.token("bob")
    wid = submit(svc, bob, shared, "-p", "small", "--", "sleep", "300")
    wait_for(lambda: workload(svc, bob, wid)["status"] == "running", 60, what="running")
    r = svc.allot(bob, "cancel", str(wid))
    assert r.returncode == 0, r.stderr
    w = ended(svc, bob, wid, 60)
    assert (w["status"], w["reason"]) == ("stopped", "cancelled by bob")
    # Allotment stops it as on every pool: SIGTERM, then SIGKILL after the grace period
    # (Slurm's own cancel would wait its cluster-wide KillWait); Slurm records the signal.
    (job,) = wait_for(
        lambda: [j for j in sacct(slurm_cluster, svc, wid) if j["State"] != "RUNNING"],
        30,
        what="sacct to show it ended",
    )
    assert job["State"].split()[0] in ("CANCELLED", "FAILED") and job["ExitCode"] == "0:15", job
    assert not slurm_cluster.run("squeue", "-h", "-n", job_name(name_for(svc.data), wid))


def test_out_of_memory_is_reported_in_the_researchers_words(
    svc: JobService, hub: Hub, shared: Path
) -> None:
    alice = hub.token("alice")
    hog = "x = bytearray(400 << 20); import time; time.sleep(5)"
    wid = submit(svc, alice, shared, "-p", "small", "--mem", "64M", "--", "python3", "-c", hog)
    w = ended(svc, alice, wid, 120)
    assert w["status"] == "failed", w
    assert str(w["reason"]).startswith("out of memory"), w


@pytest.mark.timeout(300)
def test_the_time_limit_stops_a_job_with_that_reason(
    svc: JobService, hub: Hub, shared: Path, slurm_cluster: SlurmCluster
) -> None:
    """Allotment stops it at its maximum runtime, as on every pool; Slurm's own ``--time`` is
    that rounded up to whole minutes, a backstop for when the service is down."""
    carol = hub.token("carol")
    wid = submit(svc, carol, shared, "-p", "small", "--time", "1m", "--", "sleep", "600")
    w = ended(svc, carol, wid, 200)
    assert (w["status"], w["reason"]) == ("stopped", "reached its maximum runtime (1m)"), w
    assert 60 <= _at(w["ended_at"]) - _at(w["started_at"]) < 70
    (job,) = wait_for(
        lambda: [j for j in sacct(slurm_cluster, svc, wid) if j["State"] != "RUNNING"],
        30,
        what="sacct to show it ended",
    )
    assert not slurm_cluster.run("squeue", "-h", "-n", job_name(name_for(svc.data), wid))


def test_a_job_waiting_in_slurm_shows_slurms_reason(
    svc: JobService, hub: Hub, shared: Path, slurm_cluster: SlurmCluster
) -> None:
    """Allotment admits it (nothing in the policy holds it) and Slurm queues it: its reason
    is Slurm's, in the researcher's words, and it starts when a node frees up."""
    bob = hub.token("bob")
    big = [
        submit(svc, bob, shared, "-p", "small", "--cpus", "2", "--", "sleep", "300")
        for _ in slurm_cluster.nodes
    ]
    queued = submit(svc, bob, shared, "-p", "small", "--cpus", "2", "--", "true")
    try:
        for wid in big:
            wait_for(lambda w=wid: workload(svc, bob, w)["status"] == "running", 60, what="running")
        # "(None)" until Slurm's next scheduling pass looks at the new job; then its reason.
        w = wait_for(
            lambda: "(Resources)" in str((x := workload(svc, bob, queued))["reason"]) and x,
            60,
            what="Slurm's reason on the queued job",
        )
        assert w["status"] == "starting" and w["reason"].startswith("queued in Slurm: "), w
        svc.allot(bob, "cancel", str(big[0]))
        assert ended(svc, bob, queued, 60)["exit_code"] == 0
    finally:
        svc.allot(bob, "cancel", *map(str, [*big, queued]))
