"""The usage import's pure part (``backends/slurm/usage.py``) on what a real Slurm 22.05 printed
(``tests/data/slurm/sacct_X.json``: ``sacct --json -X -a -D`` after completed, failed,
out-of-memory, cancelled, timed-out, array, two-node and node-failed jobs, one of them requeued
and run again)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from allotment.backends.local.posix import legacy_unix_name, mark, unix_name
from allotment.backends.slurm.usage import (
    SlurmJob,
    SlurmPool,
    Targets,
    hub_users,
    parse_sacct,
    pieces,
    plan,
    sacct_argv,
)
from allotment.domain.costs import Rates
from allotment.domain.ledger import external_key, hourly_micros
from allotment.domain.resources import Resources

DATA = Path(__file__).parents[1] / "data/slurm"
MIB = 2**20
RATES = Rates(cpu=2.0, memory=0.5)
MAIN = SlurmPool(1, "main", None, RATES, Resources.of(6, 12 * 1024 * MIB))


def at(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


@pytest.fixture(scope="module")
def jobs() -> list[SlurmJob]:
    return parse_sacct((DATA / "sacct_X.json").read_text())


def by_id(jobs: list[SlurmJob], job_id: int) -> list[SlurmJob]:
    return [j for j in jobs if j.job_id == job_id]


def test_the_records_of_a_real_sacct(jobs: list[SlurmJob]) -> None:
    [two] = by_id(jobs, 1100006)
    assert (two.name, two.user, two.account, two.partition, two.qos) == (
        "two-nodes",
        "ada",
        "astro",
        "main",
        "normal",
    )
    assert two.state == "CANCELLED"
    # What it held over its two nodes, all together.
    assert two.resources == Resources(2000, 512 * MIB, {})
    assert (two.start, two.end) == (at(1796225312), at(1796225329))
    [oom] = by_id(jobs, 1100004)
    assert oom.resources == Resources(1000, 100 * MIB, {})
    # Pending when cancelled: never started, nothing allocated (what it asked for is kept).
    [big] = by_id(jobs, 1100012)
    assert big.start is None and big.end is not None
    assert big.resources.millicpus == 2000


def test_a_requeued_job_is_two_runs_with_two_names(jobs: list[SlurmJob]) -> None:
    """Slurm keeps the job id and gives the second run a submit time of its own: two keys."""
    first, second = by_id(jobs, 1100016)
    assert first.state == "NODE_FAIL" and second.state == "CANCELLED"
    assert first.external_id != second.external_id
    assert first.end is not None and second.start is not None and first.end <= second.start
    assert first.external_id == f"{first.cluster}:1100016:2026-12-02T15:28:52Z"


def test_which_jobs_are_charged_and_why_the_others_are_not(jobs: list[SlurmJob]) -> None:
    targets = Targets(accounts={"astro": 1, "hep": 2}, users={"ada": 10}, pools=(MAIN,))
    now = at(1796225600)
    planned, skipped = plan(jobs, targets, now=now, entry_seconds=3600)
    # ada's jobs on astro that ran: ok, two-nodes, three array tasks, node-fail; not her
    # chemistry one (no such account here), nor grace's (no such hub user), nor the ones
    # cancelled while pending.
    assert sorted({p.external_id.split(":")[1] for p in planned}) == [
        "1100002",
        "1100006",
        "1100009",
        "1100010",
        "1100011",
        "1100015",
    ]
    assert skipped == {"account": 2, "user": 5, "not started": 1}
    [two] = [p for p in planned if ":1100006:" in p.external_id]
    assert (two.account_id, two.user_id, two.pool_id) == (1, 10, 1)
    assert two.rate == hourly_micros(RATES, Resources(2000, 512 * MIB, {})) == 4_250_000
    assert (two.start, two.end) == (at(1796225312), at(1796225329))
    assert two.key == external_key("slurm", two.external_id, two.start)


def test_jobs_any_installation_submitted_are_never_imported(jobs: list[SlurmJob]) -> None:
    [ok] = by_id(jobs, 1100002)
    ours = [
        SlurmJob(**{**{f: getattr(ok, f) for f in SlurmJob.__slots__}, "name": name})  # type: ignore[arg-type]
        for name in ("allot.lab.42", "allot.other-site.7", "allot.lab.x", "my allot.lab.1")
    ]
    targets = Targets(accounts={"astro": 1}, users={"ada": 10}, pools=(MAIN,))
    planned, skipped = plan(ours, targets, now=at(1796229999), entry_seconds=3600)
    assert skipped == {"ours": 2}
    assert len(planned) == 2  # "allot.lab.x" and "my allot.lab.1" are nobody's workload names


def test_a_name_alone_does_not_make_a_job_a_workload(jobs: list[SlurmJob]) -> None:
    """The controller checks a name against its own workloads' jobs: a direct job named
    like a workload (to go uncharged) is imported like any other."""
    [ok] = by_id(jobs, 1100002)
    fields = {f: getattr(ok, f) for f in SlurmJob.__slots__}
    mine = SlurmJob(**{**fields, "name": "allot.lab.42"})  # type: ignore[arg-type]
    posing = SlurmJob(**{**fields, "name": "allot.lab.43", "job_id": 9})  # type: ignore[arg-type]
    targets = Targets(accounts={"astro": 1}, users={"ada": 10}, pools=(MAIN,))
    planned, skipped = plan(
        [mine, posing],
        targets,
        now=at(1796229999),
        entry_seconds=3600,
        ours=lambda j: (j.name, j.job_id) == ("allot.lab.42", ok.job_id),
    )
    assert skipped == {"ours": 1}
    assert {p.external_id for p in planned} == {posing.external_id}


def test_a_finished_job_is_charged_through_its_end_a_running_one_by_whole_spans() -> None:
    s = datetime(2026, 12, 2, 10, 40, 5, tzinfo=UTC)
    hour = timedelta(hours=1)
    h11, h12, h13 = (datetime(2026, 12, 2, h, tzinfo=UTC) for h in (11, 12, 13))
    assert pieces(s, s + 2 * hour, s + 5 * hour, 3600) == [
        (s, h11),
        (h11, h12),
        (h12, s + 2 * hour),
    ]
    # Running at 12:59: the span from 12:00 is not over, it waits for the next import.
    assert pieces(s, None, h13 - timedelta(minutes=1), 3600) == [(s, h11), (h11, h12)]
    assert pieces(s, None, h13, 3600) == [(s, h11), (h11, h12), (h12, h13)]
    assert pieces(s, None, s + timedelta(minutes=5), 3600) == []
    # Ending on a boundary: no empty span after it; a job of no time: nothing.
    assert pieces(s, h12, h13, 3600) == [(s, h11), (h11, h12)]
    assert pieces(s, s, h13, 3600) == []


def test_spans_before_the_watermark_are_not_planned_again() -> None:
    s = datetime(2026, 12, 2, 10, 40, tzinfo=UTC)
    job = SlurmJob(
        "c", 7, "train", s, s, None, "ada", "astro", "main", "normal", "RUNNING", Resources.of(1)
    )
    targets = Targets(accounts={"astro": 1}, users={"ada": 10}, pools=(MAIN,))
    now = datetime(2026, 12, 2, 14, 30, tzinfo=UTC)
    everything, _ = plan([job], targets, now=now, entry_seconds=3600)
    assert [p.start.hour for p in everything] == [10, 11, 12, 13]
    later, _ = plan([job], targets, now=now, entry_seconds=3600, since=now - timedelta(hours=1))
    assert [p.start.hour for p in later] == [13]
    # The CPU time is that of the whole job: it goes with its last span, once it has ended.
    assert all(p.measured is None for p in everything)


def test_the_pool_is_the_partitions_and_the_qos_chooses_among_several() -> None:
    fast = SlurmPool(2, "main", "high", Rates(cpu=10.0), Resources.of(6))
    gpu = SlurmPool(3, "gpu", None, Rates(cpu=1.0), Resources.of(8))
    targets = Targets(accounts={"astro": 1}, users={"ada": 10}, pools=(MAIN, fast, gpu))
    s = datetime(2026, 12, 2, 10, tzinfo=UTC)

    def job(partition: str, qos: str) -> SlurmJob:
        return SlurmJob("c", 1, "j", s, s, s + timedelta(minutes=1), "ada", "astro", partition, qos,
                        "COMPLETED", Resources.of(1))  # fmt: skip

    assert targets.pool_of(job("main", "normal")) == MAIN
    assert targets.pool_of(job("main", "high")) == fast
    assert targets.pool_of(job("gpu", "normal")) == gpu
    assert targets.pool_of(job("debug", "normal")) is None


def test_gpus_are_read_from_gres_tres() -> None:
    record = {
        "job_id": 5,
        "cluster": "c",
        "name": "train",
        "user": "ada",
        "account": "Astro",
        "partition": "gpu",
        "qos": "normal",
        "state": {"current": "RUNNING", "reason": "None"},
        "time": {"submission": 1796225000, "start": 1796225001, "end": 0,
                 "total": {"seconds": 12, "microseconds": 500000}},
        "tres": {"allocated": [
            {"type": "cpu", "name": None, "id": 1, "count": 8},
            {"type": "mem", "name": None, "id": 2, "count": 32768},
            {"type": "gres", "name": "gpu:a100", "id": 1001, "count": 2},
            {"type": "gres", "name": "gpu", "id": 1002, "count": 1},
        ]},
    }  # fmt: skip
    [job] = parse_sacct(json.dumps({"jobs": [record]}))
    assert job.resources == Resources(8000, 32 * 2**30, {"a100": 2, "gpu": 1})
    assert job.end is None and job.account == "astro" and job.cpu_seconds == 12.5


def test_posix_names_lead_back_to_hub_users() -> None:
    users = {"alice": 1, "bob": 2, "a" * 40: 3, "carol": 4}
    found = hub_users(users)
    assert found[unix_name("alice")] == 1
    assert found[unix_name("a" * 40)] == 3 and found[legacy_unix_name("a" * 40)] == 3
    assert "alice" not in found  # her own name is not hers unless the identity rules say so
    found = hub_users(users, existing=["alice", "mallory"])
    assert found["alice"] == 1 and "mallory" not in found
    # The account's own mark decides: this one was made for bob; a marked account made for a
    # hub user this installation does not know is nobody's here; an account of that name
    # without the mark is somebody else's (Allotment never takes one over).
    local = {
        unix_name("alice"): mark("bob"),
        unix_name("carol"): mark("someone-else"),
        unix_name("bob"): "Bob the admin",
        "jupyter-dave": mark("dave"),
    }
    found = hub_users(users, local)
    assert found[unix_name("alice")] == 2
    assert unix_name("carol") not in found and unix_name("bob") not in found
    assert "jupyter-dave" not in found
    assert found[unix_name("a" * 40)] == 3  # not known here: its name says whose it is


def test_sacct_reads_allocations_of_everyone_every_run_by_relative_times() -> None:
    assert sacct_argv(3600) == [
        "sacct", "--json", "-X", "-a", "-D", "-S", "now-3600seconds", "-E", "now",
    ]  # fmt: skip
    assert sacct_argv(0)[6] == "now-1seconds"
