"""The Slurm backend's pure parts on what real Slurm 22.05 printed (``tests/data/slurm``):
sbatch's arguments and script, the parsers of squeue, sacct and sinfo, and the words a
researcher reads for each state and reason.

Besides lane A's recordings (``README.md`` there), the ``b-`` files come from a 3-node cluster
of ``scripts/slurm`` (accounting on), jobs of user ``laneb-u1`` charged to ``lab``:
``b-squeue-ends.json`` is ``squeue --json`` once ``true`` (1200002), ``exit 7`` (1200003),
``kill -9 $$`` (1200004), a 300 MB allocation under ``--mem 64M`` (1200005) and ``--time 1``
(1200006, TIMEOUT) had ended; ``b-sacct.txt`` is ``sacct -P -n -X -D -o <SACCT_FIELDS>`` of
those and later ones (1200031: cancelled by root while running, 1200008: while pending);
``b-squeue.txt`` is ``squeue_argv()``'s output with a completed job, a failed one whose name
holds a ``|``, jobs running on one and two nodes and two pending (Resources, Priority).
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from allotment.backends.base import LaunchSpec
from allotment.backends.slurm.backend import _positions, node_state
from allotment.backends.slurm.commands import (
    Job,
    Submission,
    Unanswered,
    batch_script,
    expand_hostlist,
    parse_exit,
    parse_raw_status,
    parse_sacct,
    parse_sbatch,
    parse_sinfo,
    parse_squeue,
    parse_squeue_text,
    parse_sstat,
    sbatch_argv,
    squeue_argv,
)
from allotment.backends.slurm.runner import unreachable
from allotment.backends.slurm.states import ended, observe, requeued_words, waiting_words
from allotment.domain.resources import Resources

DATA = Path(__file__).resolve().parents[1] / "data" / "slurm"
MIB = 2**20


def jobs_of(name: str) -> dict[int, Job]:
    raw = (DATA / name).read_bytes()
    if name.startswith("b-squeue") and name.endswith(".txt"):
        parsed = parse_squeue_text(raw)
    elif name.endswith(".txt"):
        parsed = parse_sacct(raw)
    else:
        parsed = parse_squeue(raw)
    return {j.job_id: j for j in parsed}


def options(argv: list[str]) -> dict[str, str]:
    """``--name value`` pairs of an argv (flags without a value map to "")."""
    out: dict[str, str] = {}
    for i, arg in enumerate(argv):
        if arg.startswith("--"):
            nxt = argv[i + 1] if i + 1 < len(argv) else "--"
            out[arg] = "" if nxt.startswith("--") else nxt
    return out


# -- submission -----------------------------------------------------------------------------------


def test_sbatch_gets_every_option_of_the_workload_split_per_node() -> None:
    spec = LaunchSpec(
        42,
        "alice",
        "physics/lab-a",
        ["python", "train.py"],
        Resources.of(8, 32 * 2**30, {"a100": 4}),
        max_runtime=3601,
        nodes=2,
        kind="job",
    )
    how = Submission("site", "physics.lab-a", "gpu", "high")
    argv = sbatch_argv(
        spec, how, job_name="allot.site.42", workdir="/home/a", stdout="/home/a/o", stderr="/e"
    )
    opts = options(argv)
    assert argv[:2] == ["sbatch", "--parsable"]
    assert opts["--job-name"] == "allot.site.42"
    assert opts["--account"] == "physics.lab-a"
    assert opts["--partition"] == "gpu" and opts["--qos"] == "high"
    assert (opts["--nodes"], opts["--ntasks-per-node"], opts["--cpus-per-task"]) == ("2", "1", "4")
    assert opts["--mem"] == "16384M"  # per node
    assert opts["--gres"] == "gpu:a100:2"  # per node
    assert opts["--time"] == "61"  # minutes, rounded up
    assert (opts["--chdir"], opts["--output"], opts["--error"]) == ("/home/a", "/home/a/o", "/e")
    assert opts["--comment"] == "allotment:site:42"
    assert "--requeue" in argv and "--no-requeue" not in argv
    assert ["--export", "NONE"] == argv[argv.index("--export") : argv.index("--export") + 2]


def test_gpus_are_asked_for_by_model_or_as_plain_gpus_where_slurm_has_no_types() -> None:
    spec = LaunchSpec(3, "a", "l", ["x"], Resources.of(2, 0, {"a100": 2, "h100": 1}))

    def gres(typed: bool) -> str:
        argv = sbatch_argv(
            spec,
            Submission("i", "l", gpu_types=typed),
            job_name="j",
            workdir="/",
            stdout="/o",
            stderr="/e",
        )
        return argv[argv.index("--gres") + 1]

    assert gres(True) == "gpu:a100:2,gpu:h100:1"
    assert gres(False) == "gpu:3"


def test_a_session_is_never_requeued_and_a_small_one_gets_whole_cpus() -> None:
    spec = LaunchSpec(1, "a", "lab", ["jupyterhub-singleuser"], Resources.of(0.5), kind="session")
    argv = sbatch_argv(
        spec, Submission("i", "lab"), job_name="allot.i.1", workdir="/", stdout="/o", stderr="/e"
    )
    assert "--no-requeue" in argv and "--requeue" not in argv
    assert argv[argv.index("--cpus-per-task") + 1] == "1"
    assert "--mem" not in argv and "--time" not in argv and "--partition" not in argv


def test_the_script_sets_exactly_its_environment_and_runs_the_command_in_its_place() -> None:
    tricky = 'it\'s $HOME `x` "q"\nline'
    spec = LaunchSpec(
        7,
        "a",
        "lab",
        ["printf", "%s|%s|%s|%s", "$HOME", "a b"],
        Resources.of(2),
        env={"GREETING": tricky},
    )
    script = batch_script(spec, "/home/jupyter-a", "jupyter-a").decode()
    assert script.startswith("#!/bin/sh\n")
    assert script.rstrip().splitlines()[-1].startswith("exec printf ")
    probe = script.replace(
        "exec " + shlex.join(spec.command),
        'exec printf "%s|%s|%s|%s" "$GREETING" "$HOME" "$OMP_NUM_THREADS" "$SLURM_EXPORT_ENV"',
    )
    done = subprocess.run(["/bin/sh", "-c", probe], capture_output=True, text=True, env={})
    assert done.stdout == f"{tricky}|/home/jupyter-a|2|ALL"
    with pytest.raises(ValueError):
        batch_script(
            LaunchSpec(1, "a", "l", ["true"], Resources.of(1), env={"A;rm": "x"}), "/", "a"
        )


def test_sbatch_parsable_output_is_read_with_or_without_a_cluster() -> None:
    assert parse_sbatch(b"1200010\n") == 1200010
    assert parse_sbatch(b"1200011;allottest\n") == 1200011
    with pytest.raises(ValueError):
        parse_sbatch(b"")  # tampered output: tests/security/test_slurm.py


# -- hostlists and exit statuses ---------------------------------------------------------------


def test_hostlists_expand_as_slurm_writes_them() -> None:
    assert expand_hostlist("n[1-3]") == ["n1", "n2", "n3"]
    assert expand_hostlist("n[1,3]") == ["n1", "n3"]
    assert expand_hostlist("gpu[08-10],cpu7") == ["gpu08", "gpu09", "gpu10", "cpu7"]
    assert expand_hostlist("") == []


def test_exit_statuses_from_wait_statuses_and_sacct_text() -> None:
    assert parse_raw_status(0) == (0, 0)
    assert parse_raw_status(7 << 8) == (7, 0)
    assert parse_raw_status(9) == (137, 9)
    assert parse_raw_status(253) == (None, 125)  # Slurm's out-of-memory marker, no signal
    assert parse_exit("3:0") == (3, 0)
    assert parse_exit("0:15") == (143, 15)
    assert parse_exit("") == (0, 0)


# -- squeue ----------------------------------------------------------------------------------------


def test_squeue_gives_every_job_its_state_nodes_and_exit() -> None:
    jobs = jobs_of("squeue_full.json")
    assert jobs[1100006].state == "RUNNING" and jobs[1100006].nodes == ("n1", "n3")
    assert jobs[1100006].first_node == "n1"
    assert jobs[1100003].exit_code == 3 and jobs[1100003].state == "FAILED"
    assert (jobs[1100008].state, jobs[1100008].reason, jobs[1100008].nodes) == (
        "PENDING",
        "Resources",
        (),
    )
    assert not jobs[1100008].started and jobs[1100007].started
    assert jobs[1100012].reason == "Priority"
    assert jobs[1100007].time_limit == 1 and jobs[1100002].time_limit is None
    assert (jobs[1100007].user, jobs[1100007].account) == ("grace", "hep")


def test_squeue_text_gives_what_polling_needs_without_exit_statuses() -> None:
    argv = squeue_argv()
    assert argv[:4] == ["squeue", "-h", "-t", "all"] and argv[-1].endswith(",Name:")
    jobs = jobs_of("b-squeue.txt")
    assert (jobs[1203057].state, jobs[1203057].exit_code) == ("COMPLETED", None)
    assert jobs[1203058].name == "b|pipe name" and jobs[1203058].reason == "NonZeroExitCode"
    two = jobs[1203059]
    assert (two.state, two.nodes, two.batch_host, two.time_limit) == (
        "RUNNING",
        ("n2", "n3"),
        "n2",
        90,
    )
    assert two.start >= two.submit > 0 and jobs[1203060].time_limit == 1440
    big = jobs[1203061]
    assert (big.state, big.reason, big.nodes, big.batch_host, big.start) == (
        "PENDING",
        "Resources",
        (),
        "",
        0,
    )
    assert not big.started and two.started
    assert (big.user, big.account, big.partition, big.priority) == (
        "laneb-u1",
        "lab",
        "main",
        33333,
    )


def test_pending_jobs_are_placed_by_priority_then_submission_per_partition() -> None:
    jobs = list(jobs_of("squeue_full.json").values())
    assert _positions(jobs) == {1100008: 1, 1100012: 2, 1100013: 3}
    urgent = Job(9, "x", "PENDING", partition="main", priority=10**6, submit=2**40)
    elsewhere = Job(10, "y", "PENDING", partition="debug")
    places = _positions([*jobs, urgent, elsewhere])
    assert (places[9], places[1100008], places[10]) == (1, 2, 1)


def test_a_pending_job_carries_slurms_expected_start() -> None:
    jobs = jobs_of("squeue_start.json")
    pending = [j for j in jobs.values() if j.state == "PENDING"]
    assert pending and all(j.start > j.submit for j in pending)


def test_an_unanswered_squeue_is_not_an_empty_queue() -> None:
    # squeue --json exits 0 when slurmctld is down, with errors instead of jobs.
    down = b'{"errors": [{"description": "Failed while looking for jobs", "error_number": -1,'
    down += b' "error": "Unspecified error", "source": "slurm_load_jobs"}], "jobs": []}'
    with pytest.raises(Unanswered):
        parse_squeue(down)
    assert unreachable(
        "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)"
    )
    assert not unreachable(
        "sbatch: error: Invalid account or account/partition combination specified"
    )


# -- sacct ------------------------------------------------------------------------------------------


def test_sacct_text_gives_true_exit_codes_and_who_cancelled() -> None:
    jobs = jobs_of("b-sacct.txt")
    assert (jobs[1200003].state, jobs[1200003].exit_code) == ("FAILED", 7)
    assert (jobs[1200004].exit_code, jobs[1200004].signal) == (137, 9)
    assert jobs[1200006].time_limit == 1 and jobs[1200006].state == "TIMEOUT"
    assert jobs[1200007].nodes == ("n2", "n3")
    assert jobs[1200008].nodes == () and not jobs[1200008].started
    assert jobs[1200031].extra == {"cancelled_by_uid": 0}
    assert jobs[1200002].start > 0 and jobs[1200002].submit <= jobs[1200002].start


def test_sstat_gives_cpu_over_steps_and_the_largest_step() -> None:
    # What sstat -a -P -n -o JobID,TRESUsageInTot printed for a busy job and a sleeping one.
    raw = (
        "1210072.batch|cpu=00:00:01,energy=0,fs/disk=4273,mem=54088K,pages=0,vmem=54092K\n"
        "1210072.0|cpu=01:02.500,mem=1.5G\n"
        "1210073.batch|cpu=00:00:00,energy=0,fs/disk=4109,mem=216K,pages=0,vmem=216K\n"
    )
    assert parse_sstat(raw) == {
        1210072: (63.5, int(1.5 * 2**30)),
        1210073: (0.0, 216 * 1024),
    }


# -- sinfo ------------------------------------------------------------------------------------------


def test_sinfo_gives_each_node_once_with_its_address_and_state() -> None:
    nodes = {n.name: n for n in parse_sinfo((DATA / "sinfo_drained_down.json").read_bytes())}
    assert set(nodes) == {"n1", "n2", "n3"}
    assert nodes["n1"].address == "127.0.1.1" and nodes["n1"].partitions == ("main", "debug")
    assert (nodes["n1"].cpus, nodes["n1"].memory) == (2, 4096)
    assert node_state(nodes["n1"]) == ("idle", True)
    assert node_state(nodes["n2"]) == ("draining", False)
    assert nodes["n2"].reason == "disk check by admin"
    assert node_state(nodes["n3"]) == ("down", False)


# -- words ------------------------------------------------------------------------------------------


def test_pending_reasons_in_words_keep_slurms_code() -> None:
    assert waiting_words("Resources") == "queued in Slurm: waiting for resources (Resources)"
    assert waiting_words("Priority") == (
        "queued in Slurm: waiting behind work of higher priority (Priority)"
    )
    assert waiting_words("AssocGrpCPULimit") == (
        "queued in Slurm: its account is at its limit of CPUs in Slurm (AssocGrpCPULimit)"
    )
    assert waiting_words("QOSMaxJobsPerUserLimit") == (
        "queued in Slurm: its user (QOS) is at its limit of running jobs in Slurm "
        "(QOSMaxJobsPerUserLimit)"
    )
    assert waiting_words("BeginTime") == "queued in Slurm: waiting for its start time (BeginTime)"
    assert "(ReqNodeNotAvail)" in waiting_words("ReqNodeNotAvail")
    assert (
        waiting_words("PartitionDown") == "queued in Slurm: its partition is down (PartitionDown)"
    )
    assert waiting_words("SomethingNew") == "queued in Slurm: waiting (SomethingNew)"


def test_ends_in_the_researchers_words() -> None:
    jobs = jobs_of("b-squeue-ends.json")
    ok, fail, kill, oom, limit = (jobs[i] for i in (1200002, 1200003, 1200004, 1200005, 1200006))
    assert ended(ok).reason == "completed (exit status 0)" and not ended(ok).failed
    assert (ended(fail).exit_code, ended(fail).reason) == (7, "exited with status 7")
    assert (ended(kill).exit_code, ended(kill).reason) == (
        137,
        "killed by SIGKILL (exit status 137)",
    )
    seen = ended(oom, memory=64 * MIB)
    assert seen.failed and seen.reason == (
        "out of memory: it used more than its 64M on n2 and was killed (OUT_OF_MEMORY)"
    )
    assert ended(limit).reason == "stopped at its time limit (0:01:00)"
    failed = jobs_of("squeue_requeued.json")[1100015]
    assert ended(failed).reason == "node n3 stopped responding (NODE_FAIL)"
    cancelled = jobs_of("b-sacct.txt")[1200031]
    assert ended(cancelled, cancelled_by="root").reason == "cancelled in Slurm (by root)"
    never = jobs_of("squeue_requeued.json")[1100012]
    assert ended(never).reason == "cancelled in Slurm before it started"
    preempted = Job(1, "x", "PREEMPTED", nodes=("n1",))
    assert ended(preempted).reason == "preempted by Slurm"


def test_a_running_job_back_in_the_queue_is_requeued_with_its_node_blamed() -> None:
    again = jobs_of("squeue_requeued.json")[1100016]
    seen = observe(again, was_running=True, restarts=0, ran_on=["n3"])
    assert (seen.alive, seen.requeued) == (True, True)
    assert seen.reason == "requeued by Slurm: node n3 stopped responding"
    # Still waiting from a queued placement: nothing new.
    assert not observe(again, was_running=False, restarts=1).requeued
    # Already running again elsewhere before anyone looked: its restart count tells.
    rerun = Job(1100016, "requeued", "RUNNING", nodes=("n1",), restarts=1)
    assert observe(rerun, was_running=True, restarts=0, ran_on=["n3"]).requeued
    assert requeued_words(again) == "requeued by Slurm: it was put back in its queue"
    # squeue's text has no restart count: a later start than the placement's tells instead.
    later = Job(1100016, "requeued", "RUNNING", nodes=("n1",), start=2000)
    assert observe(later, was_running=True, started_at=1000, ran_on=["n3"]).requeued
    assert not observe(later, was_running=True, started_at=2000).requeued
