"""What Allotment adds on top of Slurm, on one real Slurm cluster in one invocation: the
latency from submitting a job to its running, the drain rate of one-CPU jobs through Allotment
against plain ``sbatch``, and the cost of polling Slurm's queue while it holds 10,000 jobs.

    python -m benchmarks.slurm_overhead [--jobs 500] [--latency-runs 11] [--repeats 3]
        [--poll-jobs 10000] [--poll-seconds 30] [--out benchmarks/results/slurm_overhead.json]

Needs root and Debian's Slurm packages (``tests/support/slurm.py`` starts a three-node cluster
with accounting, 2 CPUs each: six one-CPU jobs at a time on this machine's cores). Allotment
runs as `allot serve` (SQLite) with a Slurm pool on the cluster's partition; plain Slurm jobs are
submitted by the same POSIX account (``jupyter-alice``) to the same Slurm account and partition,
with ``setpriv`` as the backend does.

Latency: from just before the submission (``POST workloads`` / ``sbatch``) to (a) the job's
command executing (the time it prints, read from its output afterwards) and (b) the job shown
running (polled every 10 ms: the API / ``squeue``). Allotment's (b) includes its poll interval
(``slurm.poll_interval``, 1 s: the policy's least).

Drain: an Allotment array of N one-CPU `true` jobs (one ``sbatch`` per task, which is what
Allotment submits) against plain Slurm's own ``sbatch --array`` and a loop of N ``sbatch``;
from the submission to the last job seen ended (by the API / by ``squeue``).

Polling: N jobs held in Slurm (``sbatch --hold``, each its own record: what ``squeue --json``
returns in full), 1,000 of them Allotment's (an array submitted through it, every node drained so
that Slurm queues them all); ``allot serve`` left idle for ``--poll-seconds`` while every Slurm
command it runs is counted (``slurm.bin_dir`` points to wrappers that log each call): calls of
``squeue`` per second, and the service's CPU per poll cycle (its own and its children's:
``/proc/PID/stat`` utime+stime+cutime+cstime). The wall and CPU of one ``squeue --json`` on its
own, and its output's size, are measured beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from tests.integration.test_slurm_jobs import slurm_policy
from tests.support.hub import Hub, free_port
from tests.support.jobs import JobService, job_service
from tests.support.slurm import SlurmCluster, start_cluster, stop_cluster

from benchmarks.harness import commit, machine

ROOT = Path(__file__).resolve().parents[1]
USER = "jupyter-alice"
LIVE = ["pending", "admitted", "starting", "running", "stopping"]
#: Slurm commands a service may run; each gets a wrapper that logs its calls.
COMMANDS = ["sbatch", "squeue", "sacct", "scancel", "sinfo", "scontrol", "sacctmgr", "sshare"]


def _median(xs: list[float]) -> float:
    return round(statistics.median(xs), 4)


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))], 4)


def _at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def _wait(check: Callable[[], bool], seconds: float, every: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} after {seconds} s")
        time.sleep(every)


class Plain:
    """Plain Slurm as ``USER`` runs it: the commands, run with setpriv as the backend does."""

    def __init__(self, cluster: SlurmCluster, account: str, workdir: Path) -> None:
        pw = pwd.getpwnam(USER)
        self.drop = [
            "setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups",
        ]  # fmt: skip
        self.env = {
            "SLURM_CONF": str(cluster.conf),
            "HOME": pw.pw_dir,
            "USER": USER,
            "PATH": "/usr/bin:/bin",
        }
        self.account = account
        self.workdir = workdir
        self.partition = cluster.partition

    def __call__(self, *argv: str) -> str:
        done = subprocess.run(
            [*self.drop, *argv], env=self.env, cwd="/", capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]}: {done.stderr.strip()}")
        return done.stdout

    def sbatch(self, *argv: str) -> str:
        return self(
            "sbatch", "--parsable", "-A", self.account, "-p", self.partition,
            "-D", str(self.workdir), "-c", "1", "--mem", "256M", *argv,
        ).strip()  # fmt: skip

    def live(self) -> list[str]:
        return self("squeue", "-h", "-u", USER, "-o", "%i").split()


def allotment_latency(c: httpx.Client, runs: int, cwd: Path) -> dict[str, Any]:
    executing, shown, service = [], [], []
    for i in range(runs):
        out = cwd / f"allot-latency-{i}.out"
        t0 = time.time()
        r = c.post(
            "workloads",
            json={
                "profile": "small",
                "command": ["date", "+%s.%N"],
                "workdir": str(cwd),
                "stdout": str(out),
                "stderr": "/dev/null",
            },
        )
        assert r.status_code == 201, r.text
        wid = r.json()["id"]
        seen: float | None = None
        while True:
            w = c.get(f"workloads/{wid}").json()
            if seen is None and w["status"] in ("running", "stopping", "stopped", "failed"):
                seen = time.time()
            if w["status"] in ("stopped", "failed"):
                break
            time.sleep(0.01)
        assert w["exit_code"] == 0, w
        executing.append(float(out.read_text().strip()) - t0)
        assert seen is not None
        shown.append(seen - t0)
        service.append(_at(w["started_at"]) - _at(w["created_at"]))
    return {
        "to_executing_p50_s": _median(executing),
        "to_executing_p95_s": _pct(executing, 0.95),
        "to_shown_running_p50_s": _median(shown),
        "to_shown_running_p95_s": _pct(shown, 0.95),
        "service_created_to_started_p50_s": _median(service),
        "runs": runs,
    }


def _written(path: Path) -> bool:
    return path.exists() and path.read_text().strip() != ""


def plain_latency(slurm: Plain, runs: int, cwd: Path) -> dict[str, Any]:
    executing, shown = [], []
    for i in range(runs):
        out = cwd / f"plain-latency-{i}.out"
        t0 = time.time()
        jid = slurm.sbatch("-o", str(out), "-e", "/dev/null", "--wrap", "date +%s.%N")
        seen: float | None = None
        while True:
            state = slurm("squeue", "-h", "-j", jid, "-o", "%T").strip()
            if seen is None and state not in ("PENDING", "CONFIGURING"):
                seen = time.time()
            if not state or state == "COMPLETED":
                break
            time.sleep(0.01)
        _wait(partial(_written, out), 10, 0.01, "output")
        executing.append(float(out.read_text().strip()) - t0)
        assert seen is not None
        shown.append(seen - t0)
    return {
        "to_executing_p50_s": _median(executing),
        "to_executing_p95_s": _pct(executing, 0.95),
        "to_shown_running_p50_s": _median(shown),
        "to_shown_running_p95_s": _pct(shown, 0.95),
        "runs": runs,
        "note": "squeue polled every 10 ms (each call ~10 ms)",
    }


def _calls(log: Path, since: int) -> tuple[int, dict[str, int]]:
    """(lines now, calls by command since line ``since``) of the wrappers' log."""
    lines = log.read_text().splitlines()
    out: dict[str, int] = {}
    for line in lines[since:]:
        parts = line.split()
        if len(parts) >= 2:
            out[parts[1]] = out.get(parts[1], 0) + 1
    return len(lines), out


def allotment_drain(c: httpx.Client, jobs: int, cwd: Path, log: Path) -> dict[str, Any]:
    mark, _ = _calls(log, 0)
    t0 = time.monotonic()
    r = c.post(
        "workloads",
        json={
            "profile": "small",
            "command": ["true"],
            "array": f"0-{jobs - 1}",
            "workdir": str(cwd),
            "stdout": "/dev/null",
            "stderr": "/dev/null",
        },
    )
    assert r.status_code == 201, r.text
    first = r.json()["id"]
    submitted = time.monotonic() - t0

    def done() -> bool:
        page = c.get("workloads", params={"array": first, "status": LIVE, "limit": 1}).json()
        return not page["items"]

    _wait(done, 1200, 0.05, "the Allotment drain")
    wall = time.monotonic() - t0
    failed = c.get("workloads", params={"array": first, "status": ["failed"], "limit": 3})
    assert not failed.json()["items"], failed.text
    return {"jobs": jobs, "submit_s": round(submitted, 3), "wall_s": round(wall, 2),
            "jobs_per_s": round(jobs / wall, 2), "slurm_calls": _calls(log, mark)[1]}  # fmt: skip


def plain_drain(slurm: Plain, jobs: int, array: bool) -> dict[str, Any]:
    t0 = time.monotonic()
    if array:
        slurm.sbatch(
            "-o", "/dev/null", "-e", "/dev/null", f"--array=0-{jobs - 1}", "--wrap", "true"
        )
    else:
        for _ in range(jobs):
            slurm.sbatch("-o", "/dev/null", "-e", "/dev/null", "--wrap", "true")
    submitted = time.monotonic() - t0
    _wait(lambda: not slurm.live(), 1200, 0.05, "the plain drain")
    wall = time.monotonic() - t0
    return {"jobs": jobs, "submit_s": round(submitted, 3), "wall_s": round(wall, 2),
            "jobs_per_s": round(jobs / wall, 2)}  # fmt: skip


def _wrappers(directory: Path, log: Path) -> Path:
    """Slurm's commands, each a wrapper that logs its call (time and first arguments) and
    execs the real one: the service's `slurm.bin_dir`."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    for name in COMMANDS:
        real = shutil.which(name, path="/usr/bin:/bin") or f"/usr/bin/{name}"
        w = directory / name
        w.write_text(f'#!/bin/sh\necho "$(date +%s.%N) {name} $1 $2" >> {log}\nexec {real} "$@"\n')
        w.chmod(0o755)
    log.touch()
    log.chmod(0o666)
    return directory


def _cpu(pid: int) -> float:
    """A process's CPU seconds, its own and its waited-for children's."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def _tree_cpu(pid: int) -> float:
    """CPU seconds of the process and of every live descendant (the controller may run in a
    child process of `allot serve`)."""
    total = 0.0
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            total += _cpu(p)
        except OSError:
            continue
        todo.extend(children.get(p, []))
    return total


def squeue_alone(cluster: SlurmCluster, runs: int = 5) -> dict[str, Any]:
    """One ``squeue --json`` of everything, as root: wall, CPU (the child's), output size."""
    walls, cpus, size = [], [], 0
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        out = cluster.run("squeue", "--json", timeout=300)
        walls.append(time.monotonic() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        size = len(out)
    plain_walls, plain_cpus, lines = [], [], 0
    for _ in range(runs):  # the same states in Slurm's text output, for comparison
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        text = cluster.run("squeue", "-h", "-t", "all", "-o", "%i|%j|%T|%r|%N|%S", timeout=300)
        plain_walls.append(time.monotonic() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        plain_cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        lines = len(text.splitlines())
    parse = []
    for _ in range(runs):
        t0 = time.process_time()
        jobs = json.loads(out)["jobs"]
        parse.append(time.process_time() - t0)
    return {
        "jobs_in_output": len(jobs),
        "output_mib": round(size / 2**20, 2),
        "wall_p50_s": _median(walls),
        "squeue_cpu_p50_s": _median(cpus),
        "json_parse_cpu_p50_s": _median(parse),
        "runs": runs,
        "text_format_instead": {
            "argv": "squeue -h -t all -o %i|%j|%T|%r|%N|%S",
            "jobs": lines,
            "wall_p50_s": _median(plain_walls),
            "squeue_cpu_p50_s": _median(plain_cpus),
        },
    }


def _hold_many(slurm: Plain, count: int, cwd: Path) -> None:
    """``count`` held one-CPU jobs, each its own record, submitted four at a time."""
    script = cwd / "held.sh"
    script.write_text("#!/bin/sh\ntrue\n")
    script.chmod(0o755)
    argv = [*slurm.drop, "sbatch", "--parsable", "--hold", "-A", slurm.account, "-p",
            slurm.partition, "-D", str(cwd), "-o", "/dev/null", "-c", "1", str(script)]  # fmt: skip
    procs: list[subprocess.Popen[bytes]] = []
    for _ in range(count):
        procs.append(
            subprocess.Popen(argv, env=slurm.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        )
        if len(procs) >= 4:
            p = procs.pop(0)
            if p.wait() != 0:
                raise RuntimeError(f"sbatch --hold: {p.stderr.read().decode() if p.stderr else ''}")
    for p in procs:
        p.wait()


def polling(
    cluster: SlurmCluster, s: JobService, token: str, slurm: Plain, log: Path,
    total: int, ours: int, seconds: float, cwd: Path,
) -> dict[str, Any]:  # fmt: skip
    """Allotment idle with ``ours`` jobs queued in Slurm among ``total``."""
    for node in cluster.nodes:
        cluster.drain(node, "benchmark: keep everything queued")
    with s.client(token) as c:
        r = c.post(
            "workloads",
            json={"profile": "small", "command": ["true"], "array": f"0-{ours - 1}",
                  "workdir": str(cwd), "stdout": "/dev/null", "stderr": "/dev/null"},
        )  # fmt: skip
        assert r.status_code == 201, r.text
        first = r.json()["id"]

        def submitted() -> bool:
            page = c.get(
                "workloads", params={"array": first, "status": ["pending", "admitted"], "limit": 1}
            ).json()
            return not page["items"]

        t0 = time.monotonic()
        _wait(submitted, 1200, 0.5, "Allotment to submit its array to Slurm")
        submit_s = time.monotonic() - t0
    t0 = time.monotonic()
    _hold_many(slurm, total - ours, cwd)
    hold_s = time.monotonic() - t0
    in_slurm = len(cluster.run("squeue", "-h", "-o", "%i", timeout=300).split())
    alone = squeue_alone(cluster)
    time.sleep(3)  # past the submissions' own polls
    pid = s.proc.pid
    lines_before = len(log.read_text().splitlines())
    cpu0, t0 = _tree_cpu(pid), time.monotonic()
    time.sleep(seconds)
    cpu1, wall = _tree_cpu(pid), time.monotonic() - t0
    calls = log.read_text().splitlines()[lines_before:]
    by_command: dict[str, int] = {}
    for line in calls:
        parts = line.split()
        by_command[parts[1]] = by_command.get(parts[1], 0) + 1
    squeues = by_command.get("squeue", 0)
    cycles = max(squeues, 1)
    result = {
        "jobs_in_slurm": in_slurm,
        "allotment_jobs_queued_in_slurm": ours,
        "allotment_submitted_its_array_in_s": round(submit_s, 1),
        "held_jobs_submitted_in_s": round(hold_s, 1),
        "window_s": round(wall, 1),
        "slurm_calls_in_window": by_command,
        "squeue_calls_per_s": round(squeues / wall, 2),
        "service_cpu_s_in_window": round(cpu1 - cpu0, 2),
        "service_cpu_s_per_cycle": round((cpu1 - cpu0) / cycles, 3),
        "service_cpu_share": round((cpu1 - cpu0) / wall, 3),
        "squeue_json_alone": alone,
    }
    for node in cluster.nodes:
        cluster.resume(node)
    return result


@contextmanager
def _service(work: Path, hub: Hub, cluster: SlurmCluster, bin_dir: Path) -> Iterator[JobService]:
    policy = slurm_policy(work, cluster)
    text = policy.read_text().replace("slurm:\n", f"slurm:\n  bin_dir: {bin_dir}\n", 1)
    policy.write_text(text)
    with job_service(free_port(), work / "data", None, hub.api_url, policy, start_within=120) as s:
        yield s


def run(
    jobs: int, latency_runs: int, repeats: int, poll_jobs: int, poll_s: float
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="allot-bench-slurm-"))
    cwd = Path(tempfile.mkdtemp(prefix="allot-bench-slurm-jobs-", dir="/var/tmp"))
    cwd.chmod(0o1777)
    results: dict[str, Any] = {}
    load_before = os.getloadavg()
    cluster = start_cluster(nodes=3, max_jobs=max(20000, poll_jobs + 5 * jobs * repeats))
    (work / "hub").mkdir()
    hub = Hub(work / "hub", ["alice"], admins=[])
    hub.start()
    # Where the users' sbatch (run as them) can reach the wrappers and append to the log.
    calls = Path(tempfile.mkdtemp(prefix="allot-bench-slurm-calls-", dir="/var/tmp"))
    calls.chmod(0o755)
    log = calls / "slurm-calls.log"
    try:
        with _service(work, hub, cluster, _wrappers(calls / "bin", log)) as s:
            token = hub.token("alice")
            with s.client(token) as c:
                allotment_latency(c, 3, cwd)  # warm: POSIX account, association, caches
                cluster.add_association(USER, "lab")
                slurm = Plain(cluster, "lab", cwd)
                plain_latency(slurm, 2, cwd)
                results["latency"] = {
                    "allotment": allotment_latency(c, latency_runs, cwd),
                    "plain_sbatch": plain_latency(slurm, latency_runs, cwd),
                }
                print("latency", results["latency"], flush=True)
                drains: dict[str, list[dict[str, Any]]] = {
                    "allotment": [], "plain_array": [], "plain_loop": [],
                }  # fmt: skip
                for _ in range(repeats):  # alternating, each alone on the cluster
                    drains["allotment"].append(allotment_drain(c, jobs, cwd, log))
                    drains["plain_array"].append(plain_drain(slurm, jobs, array=True))
                    drains["plain_loop"].append(plain_drain(slurm, jobs, array=False))
                    print({k: v[-1] for k, v in drains.items()}, flush=True)
            rates = {k: statistics.median(r["jobs_per_s"] for r in v) for k, v in drains.items()}
            results["drain"] = {
                "jobs": jobs,
                "median_jobs_per_s": rates,
                "ratio_allotment_over_plain_array": round(
                    rates["allotment"] / rates["plain_array"], 2
                ),
                "ratio_allotment_over_plain_loop": round(
                    rates["allotment"] / rates["plain_loop"], 2
                ),
                "runs": drains,
            }
            lat = results["latency"]
            results["latency"]["added_to_executing_p50_s"] = round(
                lat["allotment"]["to_executing_p50_s"] - lat["plain_sbatch"]["to_executing_p50_s"],
                3,
            )
            results["latency"]["added_to_shown_running_p50_s"] = round(
                lat["allotment"]["to_shown_running_p50_s"]
                - lat["plain_sbatch"]["to_shown_running_p50_s"],
                3,
            )
            print("drain", results["drain"]["median_jobs_per_s"], flush=True)
            cluster.wait_idle(300)
            results["polling"] = polling(
                cluster, s, token, slurm, log, poll_jobs, min(1000, poll_jobs // 10),
                poll_s, cwd,
            )  # fmt: skip
            print("polling", results["polling"], flush=True)
    finally:
        hub.stop()
        stop_cluster(cluster)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(cwd, ignore_errors=True)
        shutil.rmtree(calls, ignore_errors=True)
    return {
        "benchmark": "overhead on top of Slurm: latency, drain, polling cost",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit(),
        "machine": machine(),
        "load_before_1_5_15_min": [round(x, 2) for x in load_before],
        "setup": "Slurm 22.05 (Debian), 3 nodes of 2 CPUs on this machine's cores, cgroup v1, "
        "accounting (slurmdbd, MariaDB), Epilog=/bin/true; allot serve on SQLite with "
        "slurm.poll_interval 1s; one-CPU jobs as jupyter-alice in account lab, partition main",
        "targets": "drain >= 0.9x plain sbatch; submit-to-running latency + <= 1 s; one squeue "
        "per poll cycle",
        "results": results,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=500)
    ap.add_argument("--latency-runs", type=int, default=11)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--poll-jobs", type=int, default=10_000)
    ap.add_argument("--poll-seconds", type=float, default=30)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/slurm_overhead.json"))
    args = ap.parse_args()
    result = run(args.jobs, args.latency_runs, args.repeats, args.poll_jobs, args.poll_seconds)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
