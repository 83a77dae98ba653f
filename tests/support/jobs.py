"""A real `allot serve` running workloads on this machine, for execution tests and benchmarks.

The policy is one local pool (this machine: 2 CPUs, 4 GiB, two declared a100s, a named fake)
with lab members alice, bob, carol and outlives; tokens come from a real JupyterHub.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from allotment.backends.local.process import start_time
from allotment.installation import name_for
from tests.support.process import allot_serve, clean_env

POLICY = """\
accounts:
  lab:
    members: [alice, bob, carol, outlives]
pools:
  box:
    backend: local
    nodes: [{{name: localhost, cpus: 2, memory: 4G, gpus: {{a100: 2}}}}]
profiles:
  small:
    pool: box
    size: {{cpus: 1, memory: 256M}}
    options: {{cpus: {{min: 0.1, max: 2}}, memory_gib: {{min: 0.03, max: 4}}}}
    max_runtime: {max_runtime}
scheduling:
  stop_grace: 2s
  interval: 1s
  estimate_interval: {estimate_interval}
sessions:
  cull_idle: {cull_idle}
  cull_warning: {cull_warning}
"""


@dataclass
class JobService:
    url: str
    data: Path
    proc: subprocess.Popen[str]

    @property
    def api(self) -> str:
        return self.url + "api/"

    def client(self, token: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.api, headers={"Authorization": f"token {token}"}, timeout=30
        )

    def allot(
        self, token: str, *args: str, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """The real CLI, as a researcher runs it."""
        env = clean_env(ALLOTMENT_URL=self.url, ALLOTMENT_TOKEN=token, COLUMNS="200")
        return subprocess.run(
            [sys.executable, "-m", "allotment", *args],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=300,
        )


def policy_file(
    directory: Path,
    max_runtime: str = "1h",
    estimate_interval: str = "1s",
    cull_idle: str = "2h",
    cull_warning: str = "15m",
) -> Path:
    """The test policy; tests see expected starts within a second, benchmarks pass the
    default cadence (30s)."""
    path = directory / "box.yaml"
    path.write_text(
        POLICY.format(
            max_runtime=max_runtime,
            estimate_interval=estimate_interval,
            cull_idle=cull_idle,
            cull_warning=cull_warning,
        )
    )
    return path


@contextmanager
def job_service(
    port: int,
    data: Path,
    database_url: str | None,
    hub_api_url: str,
    policy: Path,
    *args: str,
    failpoint: str = "",
    start_within: float = 30,
) -> Iterator[JobService]:
    env = clean_env(ALLOTMENT_DATA_DIR=str(data), JUPYTERHUB_API_URL=hub_api_url)
    if database_url:
        env["ALLOTMENT_DATABASE_URL"] = database_url
    if failpoint:
        env["ALLOTMENT_FAILPOINT"] = failpoint
    with allot_serve(
        port, env, "--log-level", "warning", *args, policy=str(policy), start_within=start_within
    ) as proc:
        yield JobService(f"http://127.0.0.1:{port}/services/allotment/", data, proc)


def wait_for(
    check: Callable[[], Any], seconds: float = 60, every: float = 0.1, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


def workload(s: JobService, token: str, wid: int) -> dict[str, object]:
    """The workload as ``GET workloads/{wid}`` shows it to ``token``'s user."""
    with s.client(token) as c:
        r = c.get(f"workloads/{wid}")
        assert r.status_code == 200, r.text
        return dict(r.json())


def ended(s: JobService, token: str, wid: int, seconds: float = 60) -> dict[str, object]:
    """The workload once it has stopped or failed."""
    return dict(
        wait_for(
            lambda: (w := workload(s, token, wid))["status"] in ("stopped", "failed") and w,
            seconds,
            what=f"workload {wid} to end",
        )
    )


def cgroup_left(workload: int, data_dir: Path) -> bool:
    """Whether anything of the workload's control groups is left on this machine (those of the
    installation whose data directory is ``data_dir``)."""
    group = f"allotment/{name_for(data_dir)}/w{workload}"
    roots = [Path("/sys/fs/cgroup") / c for c in ("cpu", "cpuacct", "memory", "pids")]
    roots.append(Path("/sys/fs/cgroup"))
    return any((r / group).exists() for r in roots)


def processes_of(uid: int) -> list[int]:
    """Live processes of ``uid`` (not zombies waiting for init to reap them)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid != uid:
                    continue
            except FileNotFoundError:
                continue
            if start_time(int(entry)) is not None:
                out.append(int(entry))
    return out
