"""Faults as operators meet them, while a real `allot serve` runs real jobs: PostgreSQL stopped
and started again, the SQLite data directory's filesystem filled and freed, the service killed
again and again during a job array.

Each test asserts the same promises: nothing acknowledged (a 201) is lost; nothing runs twice
(every job appends its id to a marker file, and each id appears once); nothing is orphaned (no
control group of a workload is left, no process of the workloads' user, no process of the
service outlives it); every outcome is true (each job here exits 0 and is recorded so); while
the fault lasts the API answers 503 with ``Retry-After`` (never 500) and readiness says not
ready; and once the fault clears the same service process recovers by itself: submissions are
accepted again and pending work is admitted. How long recovery takes is measured in
``benchmarks/faults.py``, not asserted here: the waits below are generous deadlines only.
"""

from __future__ import annotations

import pwd
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from allotment.installation import name_for
from tests.backends.conftest import ROOT
from tests.support.hub import Hub, free_port
from tests.support.jobs import JobService, job_service, processes_of, wait_for
from tests.support.loopfs import fill, free, small_filesystem
from tests.support.postgres import Postgres, private_postgres
from tests.support.process import service_processes

pytestmark = [
    pytest.mark.jupyterhub,
    pytest.mark.skipif(not ROOT, reason="runs workloads as other POSIX accounts: needs root"),
]

#: The only hub user whose jobs these tests run: no other test runs processes as frank, so
#: "none of frank's processes is left" means none of these jobs' processes is left.
USER = "frank"
#: One local pool of 2 CPUs; each job asks for a tenth of one, so about 20 run at a time.
POLICY = """\
accounts:
  faults:
    members: [frank]
pools:
  box:
    backend: local
    nodes: [{name: localhost, cpus: 2, memory: 4G}]
profiles:
  tiny:
    pool: box
    size: {cpus: 0.1, memory: 32M}
scheduling:
  stop_grace: 2s
  interval: 1s
"""
ENDED = ("stopped", "failed")


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("faults-policy") / "faults.yaml"
    path.write_text(POLICY)
    return path


@pytest.fixture(scope="module")
def token(hub: Hub) -> str:
    return hub.token(USER)


@pytest.fixture
def marks() -> Iterator[Path]:
    """A world-writable directory (under /var/tmp: each workload has a /tmp of its own) where
    jobs, running as frank, leave their marks for the test to read."""
    d = Path(tempfile.mkdtemp(prefix="allot-faults-", dir="/var/tmp"))
    d.chmod(0o1777)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    with private_postgres("allotment-faults-pg.") as server:
        yield server


def job(marks: Path, *script: str) -> dict[str, object]:
    """A tiny job that appends its id to ``marks/runs`` and then runs ``script``."""
    run = "; ".join(['echo "$ALLOT_JOB_ID" >> runs', *script])
    return {
        "profile": "tiny",
        "command": ["sh", "-c", run],
        "workdir": str(marks),
        "stdout": "/dev/null",
        "stderr": "/dev/null",
    }


@dataclass
class Submitter:
    """Researchers submitting one job after another, each with its own Idempotency-Key, and
    retrying a key (as the CLI does) until the service answers it."""

    client: httpx.Client
    body: dict[str, object]
    every: float = 0.1
    acknowledged: dict[str, int] = field(default_factory=dict)
    statuses: Counter[int] = field(default_factory=Counter)
    unavailable: list[httpx.Response] = field(default_factory=list)
    refused: list[httpx.Response] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def __enter__(self) -> Submitter:
        self.thread = threading.Thread(target=self._run)
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        assert self.thread is not None
        self.thread.join(120)
        assert not self.thread.is_alive(), "the last submission was never answered"

    def _run(self) -> None:
        n = 0
        while not self.stopping.is_set():
            key = f"faults-{n}"
            n += 1
            while True:  # a key is retried until answered, even after stop() is asked
                try:
                    r = self.client.post(
                        "workloads", json=self.body, headers={"Idempotency-Key": key}, timeout=10
                    )
                except httpx.TransportError:
                    time.sleep(0.2)
                    continue
                self.statuses[r.status_code] += 1
                if r.status_code in (200, 201):
                    self.acknowledged[key] = int(r.json()["id"])
                    break
                if r.status_code == 503:
                    self.unavailable.append(r)
                if r.status_code >= 500:  # told apart by no_server_error, after the fact
                    time.sleep(0.2)
                    continue
                self.refused.append(r)  # a researcher's mistake: none is made here
                break
            time.sleep(self.every)

    def accepted_after(self, count: int) -> bool:
        return len(self.acknowledged) > count


def get(c: httpx.Client, path: str) -> httpx.Response | None:
    try:
        return c.get(path, timeout=10)
    except httpx.TransportError:
        return None


def assert_unavailable(r: httpx.Response, says: str) -> None:
    """The answer while the database cannot serve: 503, when to retry, and what is wrong."""
    assert r.status_code == 503, (r.status_code, r.text)
    assert int(r.headers["Retry-After"]) > 0, r.headers
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    problem = r.json()
    assert says in f"{problem.get('title', '')} {problem.get('detail', '')}".lower(), problem


def ready(c: httpx.Client) -> bool | None:
    """Whether readiness says ready (200) or not (503); None if it gave anything else."""
    r = get(c, "health/ready")
    if r is None or r.status_code not in (200, 503):
        return None
    return r.status_code == 200


def during_the_fault(s: JobService, token: str, submitter: Submitter, says: str) -> None:
    """While the fault lasts: submissions answer 503 with Retry-After (so does a read, when
    the database cannot be read either), readiness says not ready, liveness says alive, and the
    connection stays usable from one request to the next."""
    wait_for(
        lambda: any(code >= 500 for code in submitter.statuses),
        30,
        what="a submission to meet the fault",
    )
    no_server_error(submitter)
    assert_unavailable(submitter.unavailable[0], says)
    with s.client(token) as c:
        wait_for(lambda: ready(c) is False, 30, what="readiness to say not ready")
        read = c.get("workloads?limit=1")
        if read.status_code != 200:
            assert_unavailable(read, says)
        live = c.get("health/live")  # the same connection, after the 503s
        assert live.status_code == 200, live.text


def recovered(s: JobService, token: str, submitter: Submitter) -> None:
    """Once the fault clears, the same process serves again: ready, and submissions accepted."""
    with s.client(token) as c:
        wait_for(lambda: ready(c), 60, what="readiness to come back without a restart")
    count = len(submitter.acknowledged)
    wait_for(lambda: submitter.accepted_after(count), 60, what="a submission to be accepted")


def all_workloads(s: JobService, token: str) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    cursor = None
    with s.client(token) as c:
        while True:
            params: dict[str, int | str] = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
            r = c.get("workloads", params=params)
            assert r.status_code == 200, r.text
            page = r.json()
            out += page["items"]
            cursor = page["next_cursor"]
            if not cursor:
                return out


def all_ended(s: JobService, token: str, seconds: float = 180) -> list[dict[str, object]]:
    def done() -> list[dict[str, object]] | None:
        ws = all_workloads(s, token)
        return ws if all(w["status"] in ENDED for w in ws) else None

    result: list[dict[str, object]] = wait_for(done, seconds, every=0.5, what="every job to end")
    return result


def outcomes_true(workloads: list[dict[str, object]], marks: Path) -> None:
    """Every job ran exactly once and is recorded as it ended: stopped, exit status 0."""
    wrong = [
        (w["id"], w["status"], w["exit_code"], w["reason"])
        for w in workloads
        if (w["status"], w["exit_code"]) != ("stopped", 0)
    ]
    assert not wrong, f"{len(wrong)} of {len(workloads)} jobs recorded wrongly: {wrong[:10]}"
    runs = (marks / "runs").read_text().split()
    twice = [i for i, n in Counter(runs).items() if n > 1]
    assert not twice, f"jobs that ran twice: {twice[:20]}"
    assert sorted(map(int, runs)) == sorted(int(str(w["id"])) for w in workloads)


def nothing_orphaned(data: Path) -> None:
    """No control group of this installation's workloads, no process of the jobs' user, and no
    process of the service (its controller included) outlives them."""
    mine = f"allotment/{name_for(data)}"
    cgroups = Path("/sys/fs/cgroup")

    def groups() -> list[Path]:
        return [g for root in (cgroups, *cgroups.iterdir()) for g in root.glob(f"{mine}/w*")]

    wait_for(lambda: not groups(), 30, what="the workloads' control groups to go")
    uid = pwd.getpwnam(f"jupyter-{USER}").pw_uid
    wait_for(lambda: not processes_of(uid), 30, what=f"{USER}'s processes to go")


def acknowledged_kept(
    s: JobService, token: str, submitter: Submitter, body: dict[str, object]
) -> None:
    """Every acknowledged submission is there, and retrying any key creates nothing new."""
    with s.client(token) as c:
        for key, wid in submitter.acknowledged.items():
            r = c.post("workloads", json=body, headers={"Idempotency-Key": key})
            assert (r.status_code, r.json()["id"]) == (200, wid), r.text


def no_server_error(submitter: Submitter) -> None:
    assert not submitter.refused, [r.text for r in submitter.refused[:3]]
    errors = {code: n for code, n in submitter.statuses.items() if code >= 500 and code != 503}
    assert not errors, f"answers other than 503 while the fault lasted: {errors}"


def test_postgres_stopped_during_submissions_and_a_drain(
    postgres: Postgres, policy: Path, token: str, hub: Hub, marks: Path, tmp_path: Path
) -> None:
    data, port = tmp_path / "data", free_port()
    body = job(marks, "true")
    with job_service(port, data, postgres.url, hub.api_url, policy) as s:
        with s.client(token) as c, Submitter(c, body) as submitter:
            wait_for(lambda: submitter.accepted_after(20), 60, what="submissions to flow")
            # The first outage: researchers submitting, a few of their jobs running.
            postgres.stop()
            try:
                during_the_fault(s, token, submitter, "database")
            finally:
                postgres.start()
            recovered(s, token, submitter)
            # The second: a drain of 150 one-second jobs, about 20 running at a time.
            with s.client(token) as a:
                r = a.post("workloads", json={**job(marks, "sleep 1"), "array": "0-149"})
                assert r.status_code == 201, r.text
            wait_for(
                lambda: any(w["status"] == "running" for w in all_workloads(s, token)),
                60,
                what="the drain to start",
            )
            postgres.stop()
            try:
                during_the_fault(s, token, submitter, "database")
                time.sleep(3)  # jobs end meanwhile: their ends must not be lost
            finally:
                postgres.start()
            recovered(s, token, submitter)
        no_server_error(submitter)
        assert submitter.unavailable, "no submission met the outage"
        for r in submitter.unavailable[:5]:
            assert_unavailable(r, "database")
        workloads = all_ended(s, token)
        outcomes_true(workloads, marks)
        acknowledged_kept(s, token, submitter, body)
        ours = {int(str(w["id"])) for w in workloads if w.get("array_id") is None}
        assert ours == set(submitter.acknowledged.values()), "a submission was lost or doubled"
        nothing_orphaned(data)
    wait_for(lambda: not service_processes(data), 30, what="the service's processes to end")


def test_the_sqlite_filesystem_filled_and_freed(
    policy: Path, token: str, hub: Hub, marks: Path
) -> None:
    with small_filesystem(64) as mnt:
        data, port = mnt / "data", free_port()
        body = job(marks, "sleep 1")
        with job_service(port, data, None, hub.api_url, policy) as s:
            with s.client(token) as c, Submitter(c, body) as submitter:
                wait_for(lambda: submitter.accepted_after(20), 60, what="submissions to flow")
                fill(mnt)
                try:
                    during_the_fault(s, token, submitter, "full")
                    time.sleep(3)  # jobs end meanwhile: their exit statuses must survive
                finally:
                    free(mnt)
                recovered(s, token, submitter)
            no_server_error(submitter)
            assert submitter.unavailable, "no submission met the full disk"
            for r in submitter.unavailable[:5]:
                assert_unavailable(r, "full")
            workloads = all_ended(s, token)
            outcomes_true(workloads, marks)
            acknowledged_kept(s, token, submitter, body)
            assert {int(str(w["id"])) for w in workloads} == set(submitter.acknowledged.values())
            nothing_orphaned(data)
        wait_for(lambda: not service_processes(data), 30, what="the service's processes to end")


def test_the_service_killed_again_and_again_during_an_array(
    policy: Path, token: str, hub: Hub, marks: Path, tmp_path: Path
) -> None:
    data, port = tmp_path / "data", free_port()
    tasks = 240  # 12 waves of 20, 3 s each: the array outlasts the six kills
    body = {**job(marks, "sleep 3"), "array": f"0-{tasks - 1}"}
    signals = [signal.SIGKILL, signal.SIGTERM] * 3
    for n, sig in enumerate(signals):
        with job_service(port, data, None, hub.api_url, policy) as s:
            with s.client(token) as c:
                # Acknowledged before the first kill; after it, a retry finds the same array.
                r = c.post("workloads", json=body, headers={"Idempotency-Key": "the-array"})
                assert r.status_code == (201 if n == 0 else 200), r.text
            wait_for(lambda: (marks / "runs").exists(), 60, what="the array to start")
            time.sleep(3)
            in_progress = any(w["status"] not in ENDED for w in all_workloads(s, token))
            assert in_progress, f"the array ended before kill {n + 1}: lengthen it"
            assert s.proc.pid in service_processes(data)  # the check below sees the service
            s.proc.send_signal(sig)
            s.proc.wait(30)
        # Whatever the signal, nothing of the service is left to fight its successor.
        wait_for(lambda: not service_processes(data), 30, what="the killed service to be gone")
    with job_service(port, data, None, hub.api_url, policy) as s:
        workloads = all_ended(s, token)
        assert len(workloads) == tasks, "an element of the array was lost"
        outcomes_true(workloads, marks)
        nothing_orphaned(data)
    wait_for(lambda: not service_processes(data), 30, what="the service's processes to end")
