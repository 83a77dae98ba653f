"""Start the real pieces a benchmark measures: PostgreSQL (durable) and `allot serve`."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.hub import free_port
from tests.support.process import allot_serve, clean_env

ROOT = Path(__file__).resolve().parents[1]


def commit() -> str:
    """The commit measured (with "+uncommitted changes" when the checkout differs from it):
    every result says what it measured, so a number can be re-run when the code under it
    changes."""
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return done.stdout.strip() + ("+uncommitted changes" if dirty else "")


def machine() -> dict[str, object]:
    mem = 0
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        pass
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(mem / 1024**3, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


@contextmanager
def postgres() -> Iterator[str]:
    """A durable PostgreSQL (fsync on) on loopback; yields its SQLAlchemy URL."""
    d = tempfile.mkdtemp(prefix="allotment-bench-pg.")
    port = free_port()
    url = subprocess.run(
        [str(ROOT / "scripts/pg"), "start", d, str(port), "durable"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    try:
        yield url
    finally:
        subprocess.run([str(ROOT / "scripts/pg"), "stop", d], check=False)
        subprocess.run(["rm", "-rf", d], check=False)


@contextmanager
def served(
    database_url: str | None, policy: str = "examples/department.yaml", workers: int = 1
) -> Iterator[tuple[str, str, Path]]:
    """`allot serve` in its own process; yields (API base URL, admin token, data dir)."""
    data = Path(tempfile.mkdtemp(prefix="allotment-bench-data."))
    port = free_port()
    env = clean_env(ALLOTMENT_DATA_DIR=str(data))
    if database_url:
        env["ALLOTMENT_DATABASE_URL"] = database_url
    args = ("--log-level", "warning", "--workers", str(workers))
    try:
        with allot_serve(port, env, *args, policy=policy):
            api = f"http://127.0.0.1:{port}/services/allotment/api/"
            yield api, (data / "admin-token").read_text().strip(), data
    finally:
        shutil.rmtree(data, ignore_errors=True)
