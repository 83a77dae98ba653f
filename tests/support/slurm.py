"""A real multi-node Slurm cluster (``scripts/slurm``) for tests: Debian's packages, one slurmd
per node on this machine, accounting through a private MariaDB and slurmdbd.

Each cluster takes a range of ports of its own (and with it a range of job ids), reserved by a
lock file held as long as the cluster object lives, so that two pytest processes started at
once never collide. Its state lives under /var/tmp: jobs run as other users, who cannot reach
pytest's private directories, and every workload has a /tmp of its own.
"""

from __future__ import annotations

import fcntl
import os
import random
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["SlurmCluster", "SlurmUnavailable", "start_cluster", "stop_cluster", "usable"]

SCRIPT = Path(__file__).resolve().parents[2] / "scripts/slurm"
LOCKS = Path("/var/tmp/allot-slurm-ports")
# Port bases handed to pytest's clusters; below 20000 stay for clusters started by hand.
BASES = range(20000, 40000, 100)


class SlurmUnavailable(RuntimeError):
    """Slurm cannot run here (not root, no apt-get) or did not start."""


def usable() -> str | None:
    """Why a cluster cannot be started on this machine, or None when it can."""
    if os.geteuid() != 0:
        return "a real Slurm needs root (daemons, munge key, namespaces)"
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        return "a real Slurm needs Debian's packages (no apt-get here)"
    return None


@dataclass
class SlurmCluster:
    """A started cluster: nodes n1..nN in partition ``main`` (n1 also in ``debug``)."""

    state: Path
    conf: Path
    cluster: str
    nodes: list[str]
    partition: str = "main"
    port_base: int = 0
    _lock: int | None = field(default=None, repr=False)

    @property
    def env(self) -> dict[str, str]:
        """This process's environment with ``SLURM_CONF`` naming this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(
        self, *argv: str, user: str | None = None, check: bool = True, timeout: float = 60
    ) -> str:
        """Runs a Slurm command as root, or as the POSIX account ``user``; returns stdout.

        With ``check`` a non-zero exit raises ``subprocess.CalledProcessError`` whose
        ``stderr`` holds Slurm's message."""
        command = list(argv)
        if user is not None:
            command = ["runuser", "-u", user, "--", *command]
        done = subprocess.run(
            command, env=self.env, cwd="/", capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            raise subprocess.CalledProcessError(done.returncode, command, done.stdout, done.stderr)
        return done.stdout

    def _script(self, *args: str, timeout: float = 120) -> None:
        done = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"scripts/slurm {' '.join(args)}: {done.stderr.strip()}")

    def kill_node(self, node: str) -> None:
        """A node failure: SIGKILL to the node's slurmd, its slurmstepds and their tasks."""
        self._script("node-kill", str(self.state), node)

    def start_node(self, node: str) -> None:
        """Starts the node's slurmd again (in the node's namespace: its hostname stays)."""
        self._script("node-start", str(self.state), node)

    def stop_controller(self) -> None:
        """Stops slurmctld only; jobs keep running on the nodes."""
        self._script("ctld-stop", str(self.state))

    def start_controller(self) -> None:
        """Starts slurmctld again with its saved state and waits until it answers."""
        self._script("ctld-start", str(self.state))

    def drain(self, node: str, reason: str) -> None:
        """Drains a node the way an administrator does: running jobs finish, no new ones."""
        self.run("scontrol", "update", f"NodeName={node}", "State=DRAIN", f"Reason={reason}")

    def resume(self, node: str) -> None:
        """Returns a drained (or down) node to service."""
        self.run("scontrol", "update", f"NodeName={node}", "State=RESUME")

    def node_state(self, node: str) -> str:
        """sinfo's state word for the node, e.g. ``idle``, ``mixed``, ``drained``, ``down*``."""
        out = self.run("sinfo", "-h", "-N", "-n", node, "-o", "%T").split()
        return out[0] if out else ""

    def wait_node(self, node: str, states: set[str], timeout: float = 60) -> str:
        """Waits until the node's state is one of ``states``; returns it."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.node_state(node)
            if state in states:
                return state
            time.sleep(0.2)
        raise TimeoutError(f"{node} is {state!r} after {timeout} s, not one of {sorted(states)}")

    def cancel_all(self) -> None:
        """Cancels every job of the cluster, by its id (``scancel`` with a state alone names
        no job, and cancels nothing)."""
        ids = self.run("squeue", "-h", "-o", "%i").split()
        if ids:
            self.run("scancel", "--full", *ids, check=False)

    def wait_idle(self, timeout: float = 60) -> None:
        """Waits until no job is pending, running or completing and every node is idle."""
        deadline = time.monotonic() + timeout
        jobs, states = "", [""]
        while time.monotonic() < deadline:
            jobs = self.run("squeue", "-h", "-o", "%i").strip()
            states = self.run("sinfo", "-h", "-N", "-o", "%T").split()
            if not jobs and states and all(s == "idle" for s in states):
                return
            time.sleep(0.2)
        raise TimeoutError(f"not idle after {timeout} s: jobs {jobs.split()}, nodes {states}")

    def add_association(self, user: str, account: str, parent: str = "root") -> None:
        """Lets ``user`` charge ``account`` (created under ``parent`` when missing).

        The POSIX account must exist first: slurmctld resolves it when the association is
        added, and a user created afterwards stays "Invalid account" until it is re-added."""
        accounts = self.run("sacctmgr", "-n", "-P", "show", "account", "format=account").split()
        if account not in accounts:
            self.run("sacctmgr", "-i", "add", "account", account, f"parent={parent}")
        have = self.run(
            "sacctmgr", "-n", "-P", "show", "assoc", f"users={user}", f"accounts={account}",
            "format=user",
        )  # fmt: skip
        if user not in have.split():
            self.run("sacctmgr", "-i", "add", "user", user, f"account={account}")


def _ports_free(base: int) -> bool:
    for port in range(base, base + 22):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                return False
    return True


def _reserve() -> tuple[int, int]:
    """A port base whose 22 ports are free, locked for this process: (base, lock fd)."""
    LOCKS.mkdir(parents=True, exist_ok=True)
    bases = list(BASES)
    random.shuffle(bases)
    for base in bases:
        fd = os.open(LOCKS / f"{base}.lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        if _ports_free(base):
            return base, fd
        os.close(fd)
    raise SlurmUnavailable("no free range of 22 ports for a Slurm cluster")


def start_cluster(
    state: Path | None = None,
    *,
    nodes: int = 3,
    port_base: int | None = None,
    cpus: int = 2,
    memory: int = 4096,
    gpus: int = 0,
    accounting: bool = True,
    max_jobs: int | None = None,
) -> SlurmCluster:
    """Starts a cluster (installing the packages when missing) and waits until every node is
    idle. ``state`` defaults to /var/tmp/allot-slurm-<port base>; ``port_base`` None picks and
    reserves a free range. ``cpus``, ``memory`` (MiB) and ``gpus`` (GRES ``gpu``, at most 4,
    backed by no real device) are per node."""
    why = usable()
    if why:
        raise SlurmUnavailable(why)
    lock = None
    if port_base is None:
        port_base, lock = _reserve()
    state = state or Path(f"/var/tmp/allot-slurm-{port_base}")
    env = {
        **os.environ,
        "SLURM_NODES": str(nodes),
        "SLURM_CPUS": str(cpus),
        "SLURM_MEMORY": str(memory),
        "SLURM_NODE_GPUS": str(gpus),
        "SLURM_ACCOUNTING": "1" if accounting else "0",
        "SLURM_PORT_BASE": str(port_base),
    }
    if max_jobs is not None:
        env["SLURM_MAX_JOBS"] = str(max_jobs)
    env.pop("SLURM_CONF", None)
    done = subprocess.run(
        [str(SCRIPT), "start", str(state)], env=env, capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        subprocess.run([str(SCRIPT), "stop", str(state)], capture_output=True, timeout=120)
        if lock is not None:
            os.close(lock)
        raise SlurmUnavailable(f"scripts/slurm start failed: {done.stderr.strip()[-3000:]}")
    conf = state / "slurm.conf"
    name = next(
        line.split("=", 1)[1].strip()
        for line in conf.read_text().splitlines()
        if line.startswith("ClusterName=")
    )
    return SlurmCluster(
        state=state,
        conf=conf,
        cluster=name,
        nodes=[f"n{k}" for k in range(1, nodes + 1)],
        port_base=port_base,
        _lock=lock,
    )


def stop_cluster(c: SlurmCluster) -> None:
    """Cancels every job, stops every daemon the cluster started, removes its state (kept with
    ``ALLOT_KEEP_SLURM=1``) and releases its ports."""
    try:
        subprocess.run([str(SCRIPT), "stop", str(c.state)], check=True, timeout=120)
        if os.environ.get("ALLOT_KEEP_SLURM") != "1":  # its logs, for a look after a failure
            shutil.rmtree(c.state, ignore_errors=True)
    finally:
        if c._lock is not None:
            os.close(c._lock)
            c._lock = None
