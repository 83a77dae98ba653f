"""Recovery from a fault: how long after PostgreSQL is back, or the full disk under SQLite is
freed, the same `allot serve` (never restarted) admits work again.

For each database, ``--repeats`` times (median reported): a real `allot serve` with the
controller and the local backend (jobs run as a hub user's POSIX account) is warmed with one
job; then the fault is made (PostgreSQL stopped with ``pg_ctl -m fast``; the SQLite data
directory's filesystem, a 64 MiB ext4 on a loop device, filled with a ballast file) and held
``--hold`` seconds (10: the outage issue 13 met), while a client retries one job under one
Idempotency-Key every 20 ms, as the CLI does. Then the fault is cleared, and the clock starts
when it has: PostgreSQL's first answer to a query (polled every 10 ms from the moment it is
started), or the ballast's unlink. Measured from that instant:

- ``ready_s``: readiness (``api/health/ready``) answers 200 again;
- ``accepted_s``: the retried submission is acknowledged;
- ``admitted_s``: that workload is seen admitted or beyond (polled every 20 ms).

Needs root (POSIX accounts, cgroups, the loop mount), Debian's postgresql and a JupyterHub in
`.venv`. About a minute.

    python -m benchmarks.faults [--repeats 3] [--hold 10] [--out benchmarks/results/faults.json]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
from tests.support.hub import Hub, free_port
from tests.support.jobs import JobService, job_service, policy_file
from tests.support.loopfs import BALLAST, fill, free, small_filesystem
from tests.support.postgres import Postgres, private_postgres

from benchmarks.harness import commit, machine

ADMITTED = {"admitted", "starting", "running", "stopping", "stopped"}
POLL = 0.02


def restart(pg: Postgres) -> float:
    """Start the server again; the instant it first answered a query (polled every 10 ms from
    the moment of starting, as `pg_ctl start -w` itself polls too slowly to time)."""
    back: list[float] = []

    async def poll() -> None:
        while True:
            try:
                conn = await asyncpg.connect(
                    host="127.0.0.1", port=pg.port, user="postgres", timeout=1
                )
            except (OSError, asyncpg.PostgresError):
                await asyncio.sleep(0.01)
                continue
            try:
                await conn.fetchval("SELECT 1")
                back.append(time.monotonic())
                return
            finally:
                await conn.close()

    poller = threading.Thread(target=asyncio.run, args=(poll(),))
    poller.start()
    pg.start()
    poller.join()
    return back[0]


def _job(cwd: str) -> dict[str, object]:
    return {
        "profile": "small",
        "cpus": 0.1,
        "memory": "32M",
        "command": ["true"],
        "workdir": cwd,
        "stdout": "/dev/null",
        "stderr": "/dev/null",
    }


def _wait(check: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(POLL)
    return False


def _status(c: httpx.Client, path: str) -> int:
    try:
        return c.get(path, timeout=5).status_code
    except httpx.TransportError:
        return 0


def _warm(s: JobService, token: str, cwd: str) -> None:
    with s.client(token) as c:
        w = c.post("workloads", json=_job(cwd)).json()
        assert _wait(lambda: c.get(f"workloads/{w['id']}").json()["status"] == "stopped", 60)


def _one_fault(
    s: JobService,
    token: str,
    cwd: str,
    key: str,
    make: Callable[[], object],
    clear: Callable[[], float],
    hold: float,
) -> dict[str, Any]:
    """Make the fault, hold it ``hold`` seconds while a submission is retried, clear it; the
    times from the fault clearing (``clear``'s answer) to recovery."""
    found: dict[str, Any] = {"other_answers": []}
    clock: dict[str, float] = {}

    def submit() -> None:
        """One job under one key, retried every POLL seconds until acknowledged."""
        with s.client(token) as c:
            while True:
                try:
                    r = c.post(
                        "workloads", json=_job(cwd), headers={"Idempotency-Key": key}, timeout=10
                    )
                except httpx.TransportError:
                    r = None
                if r is not None and r.status_code in (200, 201):
                    clock["accepted"] = time.monotonic()
                    found["id"] = r.json()["id"]
                    return
                if r is not None and r.status_code != 503:
                    found["other_answers"].append(r.status_code)
                time.sleep(POLL)

    with s.client(token) as c:
        began = time.monotonic()
        make()
        found["not_ready_seen"] = _wait(lambda: _status(c, "health/ready") == 503, hold)
        submitter = threading.Thread(target=submit)
        submitter.start()
        time.sleep(max(0.0, began + hold - time.monotonic()))
        found["accepted_during_fault"] = "accepted" in clock
        t0 = clear()

        def recovered() -> bool:
            if "ready" not in clock and _status(c, "health/ready") == 200:
                clock["ready"] = time.monotonic()
            if "admitted" not in clock and "id" in found:
                if c.get(f"workloads/{found['id']}").json()["status"] in ADMITTED:
                    clock["admitted"] = time.monotonic()
            return "ready" in clock and "admitted" in clock

        assert _wait(recovered, 120), f"no recovery within 120 s: {clock}"
        submitter.join()
    return {f"{k}_s": round(v - t0, 3) for k, v in clock.items()} | found


def _freed(mountpoint: Path) -> float:
    """Remove the ballast; the instant the space was free (the unlink, before the sync)."""
    (mountpoint / BALLAST).unlink()
    back = time.monotonic()
    free(mountpoint)
    return back


def _medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    keys = ("ready_s", "accepted_s", "admitted_s")
    return {k: round(statistics.median(r[k] for r in runs), 3) for k in keys}


def _served(
    work: Path, data: Path, url: str | None, hub: Hub
) -> AbstractContextManager[JobService]:
    return job_service(free_port(), data, url, hub.api_url, policy_file(work))


@contextmanager
def _scratch() -> Iterator[tuple[Path, str]]:
    work = Path(tempfile.mkdtemp(prefix="allot-bench-faults-"))
    cwd = tempfile.mkdtemp(prefix="allot-bench-jobs-", dir="/var/tmp")  # jobs have own /tmp
    Path(cwd).chmod(0o1777)
    try:
        yield work, cwd
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(cwd, ignore_errors=True)


def run(repeats: int, hold: float) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with _scratch() as (work, cwd):
        (work / "hub").mkdir()
        hub = Hub(work / "hub", ["alice"], admins=[])
        hub.start()
        try:
            token = hub.token("alice")
            with private_postgres("allotment-bench-pg.", durable=True) as pg:
                with _served(work, work / "data-pg", pg.url, hub) as s:
                    _warm(s, token, cwd)
                    runs = []
                    for n in range(repeats):
                        again = functools.partial(restart, pg)
                        runs.append(_one_fault(s, token, cwd, f"pg-{n}", pg.stop, again, hold))
                        print("postgresql", runs[-1], flush=True)
                results["postgresql"] = {"median": _medians(runs), "runs": runs}
            with small_filesystem(64) as mnt:
                with _served(work, mnt / "data", None, hub) as s:
                    _warm(s, token, cwd)
                    runs = []
                    for n in range(repeats):
                        runs.append(
                            _one_fault(
                                s,
                                token,
                                cwd,
                                f"disk-{n}",
                                lambda: fill(mnt),
                                lambda: _freed(mnt),
                                hold,
                            )
                        )
                        print("sqlite", runs[-1], flush=True)
                results["sqlite"] = {"median": _medians(runs), "runs": runs}
        finally:
            hub.stop()
    return {
        "benchmark": "recovery: from the fault clearing to the first admitted workload",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit(),
        "machine": machine(),
        "setup": "one `allot serve` (controller on, local backend), never restarted; "
        "PostgreSQL durable, stopped with pg_ctl -m fast; SQLite on a 64 MiB ext4 loop "
        f"filesystem filled with a ballast file; each fault held {hold} s while one submission "
        "was retried every 20 ms; times from the fault clearing (PostgreSQL's first answer to "
        "a query, polled every 10 ms; the ballast's unlink)",
        "results": results,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hold", type=float, default=10)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/faults.json"))
    args = ap.parse_args()
    args.out.write_text(json.dumps(run(args.repeats, args.hold), indent=2) + "\n")


if __name__ == "__main__":
    main()
