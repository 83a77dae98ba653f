"""Real `allot serve` processes for tests, and waiting for a server to answer."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def command_lines() -> Iterator[tuple[int, bytes]]:
    """(pid, NUL-separated command line) of every process this machine runs now."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                yield int(entry), Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue  # ended meanwhile


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without Allotment's or JupyterHub's variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALLOTMENT_", "JUPYTERHUB_"))}
    env.update(extra)
    return env


def wait_healthy(url: str, seconds: float = 30) -> bool:
    """Poll ``url`` until it answers 200; False after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


@contextmanager
def allot_serve(
    port: int,
    env: dict[str, str],
    *args: str,
    policy: str = "examples/department.yaml",
    start_within: float = 30,
) -> Iterator[subprocess.Popen[str]]:
    """`allot serve -c POLICY --port PORT ARGS…`, healthy (within ``start_within`` seconds),
    then stopped."""
    log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a full pipe would block the server
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "allotment",
            "serve",
            "-c",
            policy,
            "--port",
            str(port),
            *args,
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if not wait_healthy(f"http://127.0.0.1:{port}/services/allotment/api/health", start_within):
        proc.kill()
        log.seek(0)
        raise RuntimeError(f"allot serve did not start:\n{log.read()[-4000:]}")
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def service_processes(data_dir: Path) -> list[int]:
    """Live processes of the service whose data directory is ``data_dir`` (its API and its
    controller, whatever their command lines), not counting its workloads: those run in the
    installation's control groups and may outlive the service, as they should."""
    marker = f"ALLOTMENT_DATA_DIR={data_dir}".encode()
    workloads = b"/allotment/"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            if marker not in environ:
                continue
            if workloads in Path(f"/proc/{entry}/cgroup").read_bytes():
                continue
            state = Path(f"/proc/{entry}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue  # ended meanwhile
        if state != b"Z":
            found.append(int(entry))
    return found
