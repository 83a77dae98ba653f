"""Running batch jobs on this machine: submit → running latency, and the drain rate of 1,000
trivial jobs, side by side with a real single-node Slurm on the same machine in the same
invocation (when ``scripts/slurm`` can start one: Debian's packages, as root).

    python -m benchmarks.drain [--jobs 1000] [--latency-runs 21] [--repeats 3]
        [--out benchmarks/results/drain.json]

Allotment runs as `allot serve` (SQLite, its defaults) with the controller and the local
backend: cgroups, a POSIX account per user. Both systems get 2 CPUs and 1-CPU jobs, so both run
two at a time. Latencies are the service's own timestamps (created → started), so the polling
of this script does not inflate them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.support.hub import Hub, free_port
from tests.support.jobs import JobService, job_service, policy_file

from benchmarks.harness import commit, machine

ROOT = Path(__file__).resolve().parents[1]


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def _parse(t: str) -> float:
    return datetime.fromisoformat(t).timestamp()


def allotment_latency(s: JobService, token: str, runs: int, cwd: str) -> dict[str, float]:
    starts, ends = [], []
    with s.client(token) as c:
        for _ in range(runs):
            w = c.post(
                "workloads",
                json={
                    "profile": "small",
                    "command": ["true"],
                    "workdir": cwd,
                    "stdout": "/dev/null",
                    "stderr": "/dev/null",
                },
            ).json()
            while w["status"] not in ("stopped", "failed"):
                time.sleep(0.01)
                w = c.get(f"workloads/{w['id']}").json()
            assert w["exit_code"] == 0, w
            starts.append(_parse(w["started_at"]) - _parse(w["created_at"]))
            ends.append(_parse(w["ended_at"]) - _parse(w["created_at"]))
    return {
        "submit_to_running_p50_s": round(statistics.median(starts), 4),
        "submit_to_running_p95_s": round(_pct(starts, 0.95), 4),
        "submit_to_ended_p50_s": round(statistics.median(ends), 4),
        "runs": runs,
    }


def allotment_drain(s: JobService, token: str, jobs: int, cwd: str) -> dict[str, float]:
    with s.client(token) as c:
        t0 = time.monotonic()
        first = c.post(
            "workloads",
            json={
                "profile": "small",
                "command": ["true"],
                "array": f"0-{jobs - 1}",
                "workdir": cwd,
                "stdout": "/dev/null",
                "stderr": "/dev/null",
            },
        ).json()
        submitted = time.monotonic() - t0
        live = ["pending", "admitted", "starting", "running", "stopping"]
        while True:
            page = c.get(
                "workloads", params={"array": first["id"], "status": live, "limit": 1}
            ).json()
            if not page["items"]:
                break
            time.sleep(0.05)
        wall = time.monotonic() - t0
        failed = c.get(
            "workloads", params={"array": first["id"], "status": ["failed"], "limit": 1}
        ).json()["items"]
    assert not failed, failed
    return {
        "jobs": jobs,
        "submit_s": round(submitted, 3),
        "wall_s": round(wall, 2),
        "jobs_per_s": round(jobs / wall, 1),
    }


def slurm_available() -> bool:
    return (ROOT / "scripts/slurm").exists() and shutil.which("apt-get") is not None


def slurm(command: list[str]) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def slurm_latency(runs: int) -> dict[str, float]:
    starts = []
    for _ in range(runs):
        t0 = time.monotonic()
        jid = slurm(
            ["sbatch", "--parsable", "-D", "/tmp", "-o", "/dev/null", "--wrap", "true"]
        ).strip()
        while True:
            state = slurm(["squeue", "-h", "-j", jid, "-o", "%T"]).strip()
            if state != "PENDING" and state != "CONFIGURING":
                break
            time.sleep(0.01)
        starts.append(time.monotonic() - t0)
        while slurm(["squeue", "-h", "-j", jid, "-o", "%T"]).strip():
            time.sleep(0.02)
    return {
        "submit_to_running_p50_s": round(statistics.median(starts), 4),
        "submit_to_running_p95_s": round(_pct(starts, 0.95), 4),
        "runs": runs,
        "note": "polled with squeue every 10 ms (includes ~5 ms per squeue call)",
    }


def slurm_drain(jobs: int) -> dict[str, float]:
    t0 = time.monotonic()
    slurm(
        [
            "sbatch",
            "--parsable",
            "-D",
            "/tmp",
            "-o",
            "/dev/null",
            f"--array=0-{jobs - 1}",
            "--wrap",
            "true",
        ]
    )
    submitted = time.monotonic() - t0
    while slurm(["squeue", "-h", "-r", "-o", "%i"]).strip():
        time.sleep(0.05)
    wall = time.monotonic() - t0
    return {
        "jobs": jobs,
        "submit_s": round(submitted, 3),
        "wall_s": round(wall, 2),
        "jobs_per_s": round(jobs / wall, 1),
    }


def _median_run(runs: list[dict[str, float]]) -> dict[str, Any]:
    rates = sorted(r["jobs_per_s"] for r in runs)
    return {"jobs_per_s_median": rates[len(rates) // 2], "runs": runs}


def run(jobs: int, latency_runs: int, repeats: int) -> dict[str, Any]:
    """Both systems up at once, each idle while the other is measured; drains alternate."""
    work = Path(tempfile.mkdtemp(prefix="allot-bench-"))
    # Not under /tmp: each job has a private one.
    cwd = tempfile.mkdtemp(prefix="allot-bench-jobs-", dir="/var/tmp")
    Path(cwd).chmod(0o1777)
    results: dict[str, Any] = {}
    have_slurm = False
    if slurm_available():
        up = subprocess.run([str(ROOT / "scripts/slurm"), "start"], capture_output=True, text=True)
        if up.returncode == 0:
            os.environ["SLURM_CONF"] = up.stdout.strip().splitlines()[-1].split("=", 1)[1]
            have_slurm = True
        else:
            results["slurm"] = {"error": up.stderr[-2000:]}
    (work / "hub").mkdir()
    hub = Hub(work / "hub", ["alice"], admins=[])
    hub.start()
    try:
        policy = policy_file(work, estimate_interval="30s")  # the default cadence
        with job_service(free_port(), work / "data", None, hub.api_url, policy) as s:
            token = hub.token("alice")
            allotment_latency(s, token, 3, cwd)  # warm: the POSIX account, caches
            ours = {"latency": allotment_latency(s, token, latency_runs, cwd)}
            theirs: dict[str, Any] = {}
            if have_slurm:
                theirs["latency"] = slurm_latency(latency_runs)
            drains: list[dict[str, float]] = []
            slurm_drains: list[dict[str, float]] = []
            for _ in range(repeats):
                drains.append(allotment_drain(s, token, jobs, cwd))
                print("allotment", drains[-1], flush=True)
                if have_slurm:
                    slurm_drains.append(slurm_drain(jobs))
                    print("slurm", slurm_drains[-1], flush=True)
            ours["drain"] = _median_run(drains)
            results["allotment"] = ours
            if have_slurm:
                theirs["drain"] = _median_run(slurm_drains)
                results["slurm"] = theirs
    finally:
        hub.stop()
        if have_slurm:
            subprocess.run([str(ROOT / "scripts/slurm"), "stop"], capture_output=True)
    if have_slurm:
        results["drain_rate_ratio_allotment_over_slurm"] = round(
            results["allotment"]["drain"]["jobs_per_s_median"]
            / results["slurm"]["drain"]["jobs_per_s_median"],
            2,
        )
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(cwd, ignore_errors=True)
    return {
        "benchmark": "batch jobs on one machine: latency and drain rate, Allotment vs Slurm",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit(),
        "machine": machine(),
        "setup": "2 CPUs handed out, 1-CPU jobs running `true` (two at a time on each system); "
        "Slurm 22.05 from Debian, cgroup v1, Epilog=/bin/true, no accounting database",
        "target": "drain rate at least Slurm's",
        "results": results,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--latency-runs", type=int, default=21)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/drain.json"))
    args = ap.parse_args()
    args.out.write_text(
        json.dumps(run(args.jobs, args.latency_runs, args.repeats), indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
