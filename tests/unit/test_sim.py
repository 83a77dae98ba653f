"""Trace replay on hand-made traces whose schedules were worked out on paper."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import pytest

from allotment.sim.metrics import measure
from allotment.sim.replay import replay
from allotment.sim.swf import read_swf

ROOT = Path(__file__).resolve().parents[2]

# job, submit, runtime, procs, requested time, user, group (4 cores):
#  1 at 0 takes 2 cores for 100 s; 2 at 1 needs all 4 (reservation at 100);
#  3 at 2 needs 2 for 50 s: ends at 52, before the reservation, so EASY backfills it;
#  4 at 3 needs 1 for 200 s: would hold a core the reservation needs, so it waits for 2 (150).
TRACE = [
    (1, 0, 100, 2, 100, 1, 1),
    (2, 1, 50, 4, 50, 2, 1),
    (3, 2, 50, 2, 50, 3, 2),
    (4, 3, 200, 1, 200, 3, 2),
]


def swf(path: Path, rows: list[tuple[int, ...]]) -> Path:
    lines = ["; a hand-made trace"]
    for job, submit, run, procs, req, user, group in rows:
        f = [job, submit, -1, run, procs, -1, -1, procs, req, -1, 1, user, group, -1, -1, 1, -1, -1]
        lines.append(" ".join(str(x) for x in f))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("policy", "starts"),
    [
        ("easy", {1: 0, 2: 100, 3: 2, 4: 150}),
        ("fifo", {1: 0, 2: 100, 3: 150, 4: 150}),
        ("fairshare", {1: 0, 2: 100, 3: 2, 4: 150}),
    ],
)
def test_schedules_match_the_paper(tmp_path: Path, policy: str, starts: dict[int, float]) -> None:
    jobs = list(read_swf(swf(tmp_path / "t.swf", TRACE)))
    result = replay(jobs, 4, policy)  # type: ignore[arg-type]
    assert {o.job.id: o.start for o in result.outcomes} == starts
    assert all(o.end == o.start + o.job.runtime for o in result.outcomes if o.start is not None)


def test_metrics_of_the_easy_schedule(tmp_path: Path) -> None:
    m = measure(replay(list(read_swf(swf(tmp_path / "t.swf", TRACE))), 4, "easy"))
    # waits: 0, 99, 0, 147; last end 350; work 2·100 + 4·50 + 2·50 + 1·200 = 700.
    assert (m.wait_mean, m.wait_max) == (61.5, 147)
    assert m.utilisation == pytest.approx(700 / (4 * 350))
    assert m.bounded_slowdown_mean == pytest.approx((1 + 149 / 50 + 1 + 347 / 200) / 4)


def test_fair_share_serves_the_lighter_group_first(tmp_path: Path) -> None:
    # Group 1 floods the machine; group 2 submits later. With fair share group 2's job jumps
    # the queue when cores free; in submission order it waits behind the flood.
    rows = [(i, 0, 100, 4, 100, 1, 1) for i in range(1, 6)] + [(9, 50, 100, 4, 100, 2, 2)]
    jobs = list(read_swf(swf(tmp_path / "f.swf", rows)))
    fair = {o.job.id: o.start for o in replay(jobs, 4, "fairshare", recalc=0).outcomes}
    fifo = {o.job.id: o.start for o in replay(jobs, 4, "easy").outcomes}
    assert fair[9] == 100 and fifo[9] == 500


def test_gzip_and_partitions(tmp_path: Path) -> None:
    plain = swf(tmp_path / "t.swf", TRACE).read_bytes()
    gz = tmp_path / "t.swf.gz"
    gz.write_bytes(gzip.compress(plain))
    assert len(list(read_swf(gz))) == 4
    assert list(read_swf(gz, partition=7)) == []


def test_a_truncated_line_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.swf"
    bad.write_text("1 0 -1 10 1\n")
    with pytest.raises(ValueError, match=r"bad.swf:1: expected 18 fields, found 5"):
        list(read_swf(bad))


def test_allot_simulate_writes_the_schedule(tmp_path: Path) -> None:
    trace = swf(tmp_path / "t.swf", TRACE)
    out = tmp_path / "schedule.csv"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "allotment",
            "simulate",
            "--trace",
            str(trace),
            "--cores",
            "4",
            "--policy",
            "easy",
            "--map-groups",
            "1=lab-a,2=lab-b",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={"COLUMNS": "120", "PATH": ""},
    )
    assert r.returncode == 0, r.stderr
    assert "wait mean/median/max 62 / 50 / 147 s" in r.stdout.replace(",", "")
    assert "lab-a" in r.stdout and "lab-b" in r.stdout
    rows = out.read_text().splitlines()
    assert rows[0] == "job_id,submit,start,end,procs,user,group"
    assert rows[3] == "3,2.0,2.0,52.0,2,3,2"
