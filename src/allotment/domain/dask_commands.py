"""The commands a Dask cluster's scheduler and workers run, built by the service.

Each is the cluster's chosen interpreter (``python``: the notebook's own, so the client, the
scheduler and the workers share one set of versions) running a short bootstrap with ``-c``
that executes a program text carried in the environment. The programs
(``allotment/dask/remote/``) import only the standard library, dask, distributed and tornado:
they run in the researcher's environment, where allotment need not be installed.

Why the environment and not the command line: anyone on the machine reads a command line
(``ps``), while a process's environment is readable only by its user and root. The cluster's
TLS key and token therefore travel only in ``Launch.env``; the command line carries labels
that help an administrator reading ``ps`` and nothing secret.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ENV_PREFIX",
    "Launch",
    "program_text",
    "scheduler_launch",
    "worker_launch",
]

#: Every variable the programs read starts with this.
ENV_PREFIX = "ALLOT_DASK_"

#: Where the program texts ship (package data beside this package). Read as files, not
#: imported: this layer imports nothing of ours, and the texts are never run by the service.
_REMOTE = Path(__file__).resolve().parent.parent / "dask" / "remote"

#: What ``-c`` runs: compile the program under a name that tracebacks show, then run it as
#: ``__main__``. Short and free of secrets, so ``ps`` stays readable.
_BOOTSTRAP = (
    "import os;"
    "exec(compile(os.environ.pop('ALLOT_DASK_PROGRAM'),"
    "'<allotment-dask-' + os.environ['ALLOT_DASK_ROLE'] + '>','exec'))"
)


@dataclass(frozen=True, slots=True)
class Launch:
    """What a workload runs: its command line and its extra environment."""

    #: No secrets here: ``ps`` shows it to everyone.
    command: list[str]
    #: Secrets here (certificate, key, token): only the user and root read it.
    env: dict[str, str]


@functools.cache
def program_text(role: str) -> str:
    """The text of the ``scheduler`` or ``worker`` program (read once; the same for every
    cluster, so it is never a place for a cluster's own values)."""
    if role not in ("scheduler", "worker"):
        raise ValueError(f"no Dask program for role {role!r}")
    return (_REMOTE / f"{role}.py").read_text(encoding="utf-8")


def _launch(role: str, python: str, cluster_id: int, name: str, env: dict[str, str]) -> Launch:
    command = [python, "-c", _BOOTSTRAP, f"allotment-dask-{role}", f"cluster={cluster_id}", name]
    full = {
        "ALLOT_DASK_ROLE": role,
        "ALLOT_DASK_PROGRAM": program_text(role),
        "ALLOT_DASK_CLUSTER": str(cluster_id),
        "ALLOT_DASK_NAME": name,
        # The programs read their settings from here, not from the user's dask config files:
        # those could turn encryption off.
        "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
        **env,
    }
    return Launch(command, full)


def scheduler_launch(
    *,
    cluster_id: int,
    name: str,
    python: str,
    service_url: str,
    token: str,
    tls_cert: str,
    tls_key: str,
    dashboard_prefix: str,
) -> Launch:
    """The scheduler of cluster ``cluster_id``: mutual TLS with the cluster's certificate, its
    dashboard over HTTPS under ``dashboard_prefix`` (client certificate required), reporting
    to ``{service_url}api/dask/report`` with ``token``."""
    if not service_url.endswith("/"):
        service_url += "/"
    return _launch(
        "scheduler",
        python,
        cluster_id,
        name,
        {
            "ALLOT_DASK_SERVICE_URL": service_url,
            "ALLOT_DASK_TOKEN": token,
            "ALLOT_DASK_TLS_CERT": tls_cert,
            "ALLOT_DASK_TLS_KEY": tls_key,
            "ALLOT_DASK_DASHBOARD_PREFIX": "/" + dashboard_prefix.strip("/"),
        },
    )


def worker_launch(
    *,
    cluster_id: int,
    name: str,
    python: str,
    address: str,
    tls_cert: str,
    tls_key: str,
    cpus: float,
    memory: int,
    threads: int,
    gpus: int,
) -> Launch:
    """A worker of cluster ``cluster_id`` joining the scheduler at ``address``: ``threads``
    threads (the CPUs, rounded up, when 0), a memory limit of ``memory`` bytes, and ``gpus``
    GPUs offered as the Dask resource ``GPU`` (the backend picks the devices). Its Dask name
    is its workload id, which every backend sets as ``ALLOT_WORKLOAD_ID``."""
    nthreads = threads if threads > 0 else max(1, math.ceil(cpus))
    env = {
        "ALLOT_DASK_SCHEDULER": address,
        "ALLOT_DASK_TLS_CERT": tls_cert,
        "ALLOT_DASK_TLS_KEY": tls_key,
        "ALLOT_DASK_THREADS": str(nthreads),
        "ALLOT_DASK_MEMORY": str(max(0, memory)),
    }
    if gpus > 0:
        env["ALLOT_DASK_RESOURCES"] = f"GPU={gpus}"
    return _launch("worker", python, cluster_id, name, env)
