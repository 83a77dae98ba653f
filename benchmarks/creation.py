"""Durable workload creation over HTTP, with 1 and 8 concurrent clients, on SQLite and PostgreSQL.

The load comes from `wrk` (Debian's package), a C client that leaves the CPU to the service:
this machine has 2 cores, shared by wrk, the service and the database. Each 201 answer means
the workload was committed (SQLite: WAL with synchronous=FULL; PostgreSQL: fsync on); the run
then checks that the database holds exactly as many workloads as wrk saw 201s.

Reference: Slurm's published submission rate, 1,000 jobs/s (see benchmarks/README.md).

    python -m benchmarks.creation [--seconds 10] [--out benchmarks/results/creation.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import httpx

from benchmarks.harness import machine, postgres, served

LUA = """
wrk.method = "POST"
wrk.body = '{"profile": "small", "account": "lab-a", "command": ["python", "train.py"]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "token " .. os.getenv("ALLOTMENT_TOKEN")
"""


def _count(api: str, token: str) -> int:
    n, cursor = 0, None
    with httpx.Client(headers={"Authorization": f"token {token}"}, timeout=60) as c:
        while True:
            params: dict[str, object] = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
            page = c.get(api + "workloads", params=params).json()
            n += len(page["items"])
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
    errors = int(bad.group(1)) if bad else 0
    return {
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "requests": total,
        "non_2xx": errors,
        "p50_ms": ms("50"),
        "p90_ms": ms("90"),
        "p99_ms": ms("99"),
    }


def run(seconds: int, repeats: int) -> dict[str, object]:
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk")
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    script.write_text(LUA)
    results = []
    with postgres() as pg_url:
        setups = (("sqlite", None, 1), ("postgresql", pg_url, 1), ("postgresql", pg_url, 2))
        for db_name, url, workers in setups:
            for clients in (1, 8):
                runs = []
                for _ in range(repeats):
                    with served(url, workers=workers) as (api, token, _):
                        before = _count(api, token)
                        r = _wrk(api, token, clients, seconds, script)
                        stored = _count(api, token) - before
                        acknowledged = r["requests"] - r["non_2xx"]
                        r["stored"] = stored
                        # wrk stops with up to `clients` requests in flight: those may be
                        # stored without being counted. Fewer stored than acknowledged is loss.
                        r["lost"] = max(0, acknowledged - stored)
                        r["unacknowledged_stored"] = max(0, stored - acknowledged)
                        runs.append(r)
                med = {k: statistics.median(float(x[k]) for x in runs) for k in runs[0]}
                results.append(
                    {
                        "database": db_name,
                        "workers": workers,
                        "clients": clients,
                        "median": med,
                        "runs": runs,
                    }
                )
                print(
                    f"{db_name:10} workers={workers} clients={clients}: "
                    f"{med['requests_per_s']:6.0f}/s  p50 {med['p50_ms']:.1f} ms  "
                    f"p99 {med['p99_ms']:.1f} ms  lost {med['lost']:.0f}",
                    flush=True,
                )
    script.unlink()
    return {
        "benchmark": "workload creation over HTTP",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "seconds_per_run": seconds,
        "reference": {"system": "Slurm (published)", "submissions_per_s": 1000},
        "results": results,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/creation.json"))
    args = ap.parse_args()
    data = run(args.seconds, args.repeats)
    args.out.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()
