"""Durable workload creation over HTTP while the controller runs, with and without a drain in
progress, on SQLite and PostgreSQL, side by side in one invocation.

One `allot serve` as a user starts it (one API process; the controller wherever that version
runs it), a real JupyterHub for tokens, real jobs:

- **creation**: `wrk` (Debian's package; a C client that leaves the CPU to the service) posts
  `sleep 3600` jobs as bob for ``--seconds``, with 1 and with 8 connections. Bob's account may
  use 4 CPUs: four run, the rest wait, so the queue grows as it would on a busy day and the
  scheduling loop works through it while the submissions arrive.
- **drain**: alice's job array of ``--drain-jobs`` `true` jobs, 20 at a time, alone.
- **creation during a drain**: both at once; creations/s, and the drain's jobs/s over the
  same window, against the drain alone.

Each 201 means committed (SQLite: WAL with synchronous=FULL; PostgreSQL: fsync on); afterwards
the database is checked to hold every acknowledged workload. Every measurement gets a fresh
service and database. Results record the date and the commit.

    python -m benchmarks.creation [--seconds 10] [--repeats 3] [--drain-jobs 1500]
        [--out benchmarks/results/creation.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from tests.support.hub import Hub, free_port
from tests.support.process import allot_serve, clean_env

from benchmarks.harness import commit, machine, postgres

POLICY = """\
accounts:
  drain: {members: [alice]}
  load: {members: [bob]}
pools:
  box:
    backend: local
    nodes: [{name: localhost, cpus: 24, memory: 16G}]
profiles:
  small:
    pool: box
    size: {cpus: 1, memory: 64M}
limits:
  accounts:
    drain: {cpus: 20}
    load: {cpus: 4}
  pending_per_user: 1000000
"""

LUA = """
wrk.method = "POST"
wrk.body = '{"profile": "small", "account": "load", "command": ["sleep", "3600"], '
  .. '"workdir": "WORKDIR", "stdout": "/dev/null", "stderr": "/dev/null"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "token " .. os.getenv("ALLOTMENT_TOKEN")
"""

LIVE = ["pending", "admitted", "starting", "running", "stopping"]


def _count(api: str, token: str, **params: Any) -> int:
    """Workloads ``token``'s user sees, through the API's pages."""
    n, cursor = 0, None
    with httpx.Client(headers={"Authorization": f"token {token}"}, timeout=120) as c:
        while True:
            page = c.get(
                api + "workloads",
                params={"limit": 1000, **params, **({"cursor": cursor} if cursor else {})},
            ).json()
            n += len(page["items"])
            cursor = page["next_cursor"]
            if not cursor:
                return n


def _ended_between(api: str, token: str, array: int, t0: float, t1: float) -> int:
    """Elements of ``array`` that ended within [t0, t1] (the service's own timestamps)."""
    n, cursor = 0, None
    with httpx.Client(headers={"Authorization": f"token {token}"}, timeout=120) as c:
        while True:
            page = c.get(
                api + "workloads",
                params={
                    "array": array,
                    "status": ["stopped", "failed"],
                    "limit": 1000,
                    **({"cursor": cursor} if cursor else {}),
                },
            ).json()
            for w in page["items"]:
                ended = datetime.fromisoformat(w["ended_at"]).timestamp()
                n += t0 <= ended <= t1
            cursor = page["next_cursor"]
            if not cursor:
                return n


def _wrk(api: str, token: str, clients: int, seconds: int, script: Path) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            "-t",
            str(min(clients, 2)),
            "-c",
            str(clients),
            "-d",
            f"{seconds}s",
            "--latency",
            "-s",
            str(script),
            api + "workloads",
        ],
        env={**os.environ, "ALLOTMENT_TOKEN": token},
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def ms(label: str) -> float:
        m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert m, out
        return float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]

    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "requests": total,
        "non_2xx": int(bad.group(1)) if bad else 0,
        "p50_ms": ms("50"),
        "p90_ms": ms("90"),
        "p99_ms": ms("99"),
    }


def _admin_sql(server: str, sql: str) -> None:
    async def go() -> None:
        engine = create_async_engine(
            make_url(server).set(database="postgres"), isolation_level="AUTOCOMMIT"
        )
        async with engine.connect() as conn:
            await conn.execute(text(sql))
        await engine.dispose()

    asyncio.run(go())


@contextmanager
def _database(server: str | None) -> Iterator[str | None]:
    """A fresh database on ``server`` (PostgreSQL), dropped afterwards; None: SQLite."""
    if server is None:
        yield None
        return
    name = "bench_" + uuid.uuid4().hex[:12]
    url = make_url(server).set(drivername="postgresql+asyncpg")
    _admin_sql(url.render_as_string(hide_password=False), f'CREATE DATABASE "{name}"')
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        _admin_sql(
            url.render_as_string(hide_password=False),
            f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
        )


@contextmanager
def _service(server: str | None, hub: Hub, work: Path) -> Iterator[str]:
    """A fresh `allot serve` on a fresh database; yields its API base URL."""
    data = Path(tempfile.mkdtemp(prefix="allotment-bench-data."))
    policy = work / "creation.yaml"
    policy.write_text(POLICY)
    port = free_port()
    with _database(server) as url:
        env = clean_env(ALLOTMENT_DATA_DIR=str(data), JUPYTERHUB_API_URL=hub.api_url)
        if url:
            env["ALLOTMENT_DATABASE_URL"] = url
        try:
            with allot_serve(port, env, "--log-level", "warning", policy=str(policy)):
                api = f"http://127.0.0.1:{port}/services/allotment/api/"
                try:
                    yield api
                finally:
                    _stop_running(api, (data / "admin-token").read_text().strip())
        finally:
            shutil.rmtree(data, ignore_errors=True)


def _stop_running(api: str, admin: str) -> None:
    """Cancel what runs and wait for it to end: workloads outlive their service (by design),
    and a benchmark leaves nothing running on the machine."""
    started = ["admitted", "starting", "running", "stopping"]
    with httpx.Client(headers={"Authorization": f"token {admin}"}, timeout=60) as c:
        for w in c.get(api + "workloads", params={"status": started, "limit": 1000}).json()[
            "items"
        ]:
            c.post(api + f"workloads/{w['id']}/cancel")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            page = c.get(api + "workloads", params={"status": started, "limit": 1}).json()
            if not page["items"]:
                return
            time.sleep(0.2)


def _creation(api: str, token: str, clients: int, seconds: int, script: Path) -> dict[str, Any]:
    before = _count(api, token)
    r: dict[str, Any] = _wrk(api, token, clients, seconds, script)
    stored = _count(api, token) - before
    acknowledged = r["requests"] - r["non_2xx"]
    r["stored"] = stored
    # wrk stops with up to `clients` requests in flight: those may be stored without being
    # counted. Fewer stored than acknowledged is loss.
    r["lost"] = max(0, acknowledged - stored)
    return r


def _start_drain(api: str, token: str, jobs: int, cwd: str) -> int:
    with httpx.Client(headers={"Authorization": f"token {token}"}, timeout=60) as c:
        r = c.post(
            api + "workloads",
            json={
                "profile": "small",
                "account": "drain",
                "command": ["true"],
                "array": f"0-{jobs - 1}",
                "workdir": cwd,
                "stdout": "/dev/null",
                "stderr": "/dev/null",
            },
        )
        assert r.status_code == 201, r.text
        return int(r.json()["id"])


def _drain(
    api: str,
    alice: str,
    bob: str,
    jobs: int,
    seconds: int,
    cwd: str,
    script: Path | None,
) -> dict[str, Any]:
    """A drain's rate over ``seconds``, with 8 clients creating meanwhile when ``script``."""
    array = _start_drain(api, alice, jobs, cwd)
    time.sleep(2)  # past the first admissions: the drain is in its stride
    t0 = time.time()
    result: dict[str, Any] = {}
    if script is not None:
        result = _creation(api, bob, 8, seconds, script)
    else:
        time.sleep(seconds)
    t1 = time.time()
    done = _ended_between(api, alice, array, t0, t1)
    left = _count(api, alice, array=array, status=LIVE)
    assert left > 0, "the drain ended before the window did: give it more jobs"
    result["drain_jobs_per_s"] = round(done / (t1 - t0), 1)
    return result


def _median(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {k: statistics.median(float(r[k]) for r in runs) for k in runs[0]}


def run(seconds: int, repeats: int, drain_jobs: int) -> dict[str, Any]:
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk")
    work = Path(tempfile.mkdtemp(prefix="allotment-bench-creation."))
    cwd = tempfile.mkdtemp(prefix="allot-bench-jobs-", dir="/var/tmp")  # not under /tmp
    Path(cwd).chmod(0o1777)
    script = work / "create.lua"
    script.write_text(LUA.replace("WORKDIR", cwd))
    (work / "hub").mkdir()
    hub = Hub(work / "hub", ["alice", "bob"], admins=[])
    hub.start()
    results: list[dict[str, Any]] = []
    try:
        alice, bob = hub.token("alice"), hub.token("bob")
        with postgres() as pg:
            for db_name, server in (("sqlite", None), ("postgresql", pg)):
                runs: dict[str, list[dict[str, Any]]] = {
                    "creation, 1 client": [],
                    "creation, 8 clients": [],
                    "drain alone": [],
                    "creation, 8 clients, during a drain": [],
                }
                for _ in range(repeats):
                    for clients in (1, 8):
                        with _service(server, hub, work) as api:
                            runs[f"creation, {clients} client{'s' * (clients > 1)}"].append(
                                _creation(api, bob, clients, seconds, script)
                            )
                    with _service(server, hub, work) as api:
                        runs["drain alone"].append(
                            _drain(api, alice, bob, drain_jobs, seconds, cwd, None)
                        )
                    with _service(server, hub, work) as api:
                        runs["creation, 8 clients, during a drain"].append(
                            _drain(api, alice, bob, drain_jobs, seconds, cwd, script)
                        )
                for what, rs in runs.items():
                    med = _median(rs)
                    results.append({"database": db_name, "what": what, "median": med, "runs": rs})
                    shown = (
                        f"{med['requests_per_s']:6.0f} creations/s  p50 {med['p50_ms']:.1f} ms  "
                        f"p99 {med['p99_ms']:.1f} ms  lost {med['lost']:.0f}"
                        if "requests_per_s" in med
                        else ""
                    )
                    if "drain_jobs_per_s" in med:
                        shown += f"  drain {med['drain_jobs_per_s']:.1f} jobs/s"
                    print(f"{db_name:10} {what:38} {shown}", flush=True)
    finally:
        hub.stop()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(cwd, ignore_errors=True)
    return {
        "benchmark": "workload creation over HTTP while the controller runs, with and without "
        "a drain",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit(),
        "machine": machine(),
        "seconds_per_run": seconds,
        "repeats": repeats,
        "drain_jobs": drain_jobs,
        "reference": {"system": "Slurm (published)", "submissions_per_s": 1000},
        "targets": {
            "postgresql_8_clients_per_s": 900,
            "sqlite_8_clients_per_s": 400,
            "during_a_drain": "at least 0.5x, the drain no more than 10% slower",
        },
        "results": results,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--drain-jobs", type=int, default=1500)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/creation.json"))
    args = ap.parse_args()
    data = run(args.seconds, args.repeats, args.drain_jobs)
    args.out.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()
