"""A real `allot serve` with Dask clusters, for end-to-end tests and the benchmark.

The clusters' schedulers and workers run as the hub users' own POSIX accounts, in cgroups,
from an interpreter those accounts can run: the session environment (``allot up`` builds it
with `cli.environments.ensure_environment`; it carries dask and distributed pinned to the
service's versions), plus xarray and zarr as a researcher's environment would have them. It is
built once per machine in a directory under /var/tmp named after what it is built from, so a
change to the session environment (its ``_wanted()``) builds a new one.

Tokens come from a real JupyterHub (``tests/support/hub.py``), as in ``tests/support/jobs.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import re
import subprocess
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx

from allotment.api.dask_credentials import new_cluster_secrets
from allotment.backends.local.cgroups import prefix_of
from allotment.backends.local.posix import PosixAccounts
from allotment.cli.environments import _wanted, ensure_environment
from allotment.installation import name_for
from tests.support.hub import Hub, free_port
from tests.support.jobs import JobService, job_service, wait_for

#: What the Dask tests' workers import beyond dask and distributed, at the service's versions.
SCIENCE = ("xarray", "zarr", "numpy", "pandas")

#: The policy the Dask tests run under. alice and bob share ``lab``; carol alone has
#: ``tight`` (3 CPUs of quota, no borrowing), for the quota test. Timers are short so that the
#: culler's and the owner's rules act within a test.
POLICY = """\
currency: credits
accounts:
  lab: {{members: [alice, bob]}}
  tight: {{members: [carol]}}
pools:
  box:  # declared larger than the machine's 2 cores: workers are small and mostly idle
    backend: local
    nodes: [{{name: localhost, cpus: 16, memory: 20G}}]
    rates: {{cpu: 3600, memory: 0}}
profiles:
  dask:
    pool: box
    size: {{cpus: 0.5, memory: 1G}}
    options: {{cpus: {{min: 0.1, max: 2}}, memory_gib: {{min: 0.25, max: 4}}}}
    max_runtime: 1h
allocations:
  - account: tight
    pool: box
    quota: {{cpus: 3, memory: 8G}}
    borrowing_limit: {{cpus: 0, memory: 0}}
dask:
  profile: dask
  scheduler_cpus: 0.5
  scheduler_memory: 1G
  max_workers: 8
  clusters_per_user: 4
  idle_timeout: {idle_timeout}
  owner_grace: {owner_grace}
scheduling: {{stop_grace: 5s, interval: 1s, estimate_interval: 1s}}
accounting: {{interval: 1s, entry: 1m}}
"""


class DaskUnavailable(RuntimeError):
    """The Dask environment cannot be built or lacks what the tests need (skip, say why)."""


def environment_prefix() -> Path:
    """Where the test environment lives: named after the session environment's ``_wanted()``
    and the science packages' versions."""
    wanted = {"session": _wanted(), "science": {p: version(p) for p in SCIENCE}}
    digest = hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()[:16]
    return Path(f"/var/tmp/allotment-test-dask-env-{digest}")


def dask_environment() -> Path:
    """The interpreter every test user can run, with dask, distributed, xarray and zarr at the
    versions this process has (built on first use; other processes wait on a lock)."""
    prefix = environment_prefix()
    python = prefix / "bin" / "python"
    done = prefix / "allotment-test-science.json"
    lock = Path(str(prefix) + ".lock")
    with lock.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        if not done.exists():
            try:
                ensure_environment(prefix)
                pins = [f"{p}=={version(p)}" for p in SCIENCE]
                subprocess.run(
                    [
                        str(python),
                        "-m",
                        "pip",
                        "install",
                        "-q",
                        "--disable-pip-version-check",
                        *pins,
                    ],
                    check=True,
                    timeout=900,
                )
            except (OSError, subprocess.SubprocessError) as e:
                raise DaskUnavailable(f"the Dask test environment did not build: {e}") from e
            subprocess.run(["chmod", "-R", "go+rX", str(prefix)], check=True)
            done.write_text(json.dumps({p: version(p) for p in SCIENCE}))
    missing = _missing(python)
    if missing:
        raise DaskUnavailable(
            f"the session environment ({prefix}) lacks {missing}: "
            "cli/environments.py does not install Dask yet"
        )
    return python


def _missing(python: Path) -> str:
    """Modules (or versions) the workers need that ``python`` does not have, in words."""
    check = (
        "import importlib.metadata as m, json\n"
        "out = {}\n"
        f"for p in {('dask', 'distributed', *SCIENCE)!r}:\n"
        "    try: out[p] = m.version(p)\n"
        "    except m.PackageNotFoundError: out[p] = None\n"
        "print(json.dumps(out))\n"
    )
    found = json.loads(
        subprocess.run(
            [str(python), "-c", check], check=True, capture_output=True, text=True
        ).stdout
    )
    wrong = [f"{p} {version(p)} (has {v or 'none'})" for p, v in found.items() if v != version(p)]
    return ", ".join(wrong)


def policy_text(idle_timeout: str = "20s", owner_grace: str = "20s") -> str:
    return POLICY.format(idle_timeout=idle_timeout, owner_grace=owner_grace)


@dataclass
class DaskService:
    """A running `allot serve` with Dask, its hub, and the interpreter clusters run."""

    job: JobService
    hub: Hub
    python: Path
    _tokens: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.job.url

    @property
    def data(self) -> Path:
        return self.job.data

    def token(self, user: str) -> str:
        """A token of ``user`` (one per user, kept for the service's life)."""
        if user not in self._tokens:
            self._tokens[user] = self.hub.token(user)
        return self._tokens[user]

    def api(self, user: str) -> httpx.Client:
        return self.job.client(self.token(user))

    def cluster(self, user: str, **kw: Any) -> Any:
        """An `AllotmentCluster` of ``user``'s, as a notebook makes one (outside a session),
        its scheduler and workers on :attr:`python`."""
        from allotment.dask import AllotmentCluster

        kw.setdefault("profile", "dask")
        kw.setdefault("timeout", 120)
        return AllotmentCluster(python=str(self.python), url=self.url, token=self.token(user), **kw)

    def show(self, user: str, name: str, ended: bool = False) -> dict[str, Any] | None:
        """The cluster as ``GET dask/clusters`` shows it to its owner (None: not listed)."""
        with self.api(user) as c:
            r = c.get("dask/clusters", params={"ended": "true"} if ended else {})
            assert r.status_code == 200, r.text
            return next((x for x in r.json() if x["name"] == name), None)

    def workloads(self, user: str, kind: str, status: list[str] | None = None) -> list[Any]:
        with self.api(user) as c:
            params: dict[str, Any] = {"kind": kind, "limit": 1000}
            if status:
                params["status"] = status
            r = c.get("workloads", params=params)
            assert r.status_code == 200, r.text
            body = r.json()
            return list(body["items"] if isinstance(body, dict) else body)

    def cgroup(self, workload: int) -> Path:
        """The workload's CPU control group (v2 unified, or v1's cpu hierarchy)."""
        prefix = prefix_of(name_for(self.data))
        v2 = Path("/sys/fs/cgroup") / prefix / f"w{workload}"
        if Path("/sys/fs/cgroup/cgroup.controllers").exists():
            return v2
        return Path("/sys/fs/cgroup/cpu") / prefix / f"w{workload}"

    def cpu_limit(self, workload: int) -> float:
        """CPUs the workload's cgroup allows now (0 when it has no group: not running)."""
        d = self.cgroup(workload)
        try:
            if (d / "cpu.max").exists():
                quota, period = (d / "cpu.max").read_text().split()
                return 0.0 if quota == "max" else int(quota) / int(period)
            quota_us = int((d / "cpu.cfs_quota_us").read_text())
            return quota_us / int((d / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            return 0.0

    def pids(self, workload: int) -> list[int]:
        """Processes in the workload's groups."""
        found: set[int] = set()
        roots = [Path("/sys/fs/cgroup")]
        roots += [Path("/sys/fs/cgroup") / c for c in ("cpu", "memory", "pids")]
        prefix = prefix_of(name_for(self.data))
        for r in roots:
            try:
                text = (r / prefix / f"w{workload}" / "cgroup.procs").read_text()
            except OSError:
                continue
            found.update(int(x) for x in text.split())
        return sorted(found)


def running(svc: DaskService, user: str, name: str, workers: int, seconds: float = 120) -> Any:
    """The cluster once ``workers`` of its workers run."""
    return wait_for(
        lambda: (c := svc.show(user, name)) and c["state"] == "running" and
        c["running"] >= workers and c,
        seconds,
        every=0.5,
        what=f"cluster {name} to run {workers} workers",
    )  # fmt: skip


@contextmanager
def dask_service(
    directory: Path,
    hub: Hub,
    *,
    policy: str | None = None,
    database_url: str | None = None,
) -> Iterator[DaskService]:
    """`allot serve` on this machine (SQLite in its data directory unless ``database_url``)
    with the Dask test policy (or ``policy``, a YAML text)."""
    python = dask_environment()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "dask.yaml"
    path.write_text(policy if policy is not None else policy_text())
    with job_service(
        free_port(), directory / "data", database_url, hub.api_url, path, start_within=120
    ) as s:
        yield DaskService(s, hub, python)


@contextmanager
def dask_stack(directory: Path, *, bench: bool = False) -> Iterator[DaskService]:
    """A hub of its own and :func:`dask_service` (the benchmark's entry: no pytest fixtures).
    ``bench``: the culler's timers long enough never to act during a measurement."""
    directory.mkdir(parents=True, exist_ok=True)
    hub = Hub(directory / "hub", ["alice", "bob", "carol"], admins=[])
    (directory / "hub").mkdir(exist_ok=True)
    hub.start()
    try:
        text = policy_text("1h", "10m") if bench else None
        with dask_service(directory / "service", hub, policy=text) as svc:
            yield svc
    finally:
        hub.stop()


def cluster_ports(pids: Iterable[int]) -> set[int]:
    """TCP ports that the Dask processes among ``pids`` (a cluster's scheduler and workers, as
    their workloads' groups list them; named ``allotment-dask-…`` in their argv) listen on, as
    root's ``ss`` sees them. Not every Dask process of the user: another test's cluster of the
    same user may run meanwhile."""
    mine = set(pids)
    out = subprocess.run(["ss", "-ltnpH"], check=True, capture_output=True, text=True).stdout
    ports = set()
    for line in out.splitlines():
        local = line.split()[3]
        for pid in map(int, re.findall(r"pid=(\d+)", line)):
            if pid not in mine:
                continue
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                if b"allotment-dask-" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    ports.add(int(local.rsplit(":", 1)[1]))
    return ports


#: Run as another POSIX user of the machine: connect to a cluster's scheduler with the TLS
#: credentials of another cluster (``PROBE_CERT``, ``PROBE_KEY``: as that user's own cluster
#: would have), then knock on each port over HTTPS without a client certificate and over plain
#: HTTP. Prints one word per attempt: "refused", or what it reached (any HTTP
#: answer, an error status included, counts as reached).
PROBE = """
import os, ssl, sys, urllib.error, urllib.request
from distributed import Client
from distributed.security import Security
address, ports = sys.argv[1], sys.argv[2:]
cert, key = os.environ["PROBE_CERT"], os.environ["PROBE_KEY"]
security = Security(
    tls_ca_file=cert, tls_client_cert=cert, tls_client_key=key, require_encryption=True
)
try:
    Client(address, security=security, timeout=10, set_as_default=False)
    print("connected")
except Exception:
    print("refused")
tls = ssl.create_default_context()
tls.check_hostname = False
tls.verify_mode = ssl.CERT_NONE
for port in ports:
    for scheme, context in (("https", tls), ("http", None)):
        try:
            urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}/health", context=context, timeout=10)
            print(f"served:{scheme}:{port}")
        except urllib.error.HTTPError as e:  # an answer all the same (404, 403, ...)
            print(f"answered:{e.code}:{scheme}:{port}")
        except Exception:
            print("refused")
"""


def probe_as(hub_user: str, python: Path, address: str, ports: set[int]) -> list[str]:
    """What :data:`PROBE` reached, run as ``hub_user``'s own POSIX account (made as Allotment
    makes it, if that user has run nothing yet)."""
    account = asyncio.run(PosixAccounts().resolve(hub_user))
    assert account.uid != 0
    theirs = new_cluster_secrets()
    argv = [
        "setpriv",
        f"--reuid={account.uid}",
        f"--regid={account.gid}",
        "--clear-groups",
        str(python),
        "-c",
        PROBE,
        address,
        *(str(p) for p in sorted(ports)),
    ]
    ran = subprocess.run(
        argv,
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(account.home),
            "LANG": "C.UTF-8",
            "PROBE_CERT": theirs.tls_cert,
            "PROBE_KEY": theirs.tls_key,
        },
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    return ran.stdout.split()
