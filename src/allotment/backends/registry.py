"""Backends from a registry, keyed by a pool's ``backend:`` name.

The controller and the API build the backends a policy needs from here, knowing none of them:
a new backend (Slurm, Kubernetes) is one more factory, not a change to the controller. A pool
whose backend has no factory here waits, with a reason, until a service that runs it starts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from allotment.backends.base import Backend
from allotment.backends.local.backend import LocalBackend
from allotment.backends.local.cgroups import detect
from allotment.backends.local.posix import PosixAccounts
from allotment.backends.slurm.backend import SlurmBackend, slurm_backend
from allotment.config.models import Policy
from allotment.domain.resources import Resources
from allotment.installation import installation_of

__all__ = ["CLASSES", "FACTORIES", "Factory", "backends_for", "local_backend", "private_path"]

#: Builds the backend for a policy's pools of one kind, or None when the policy has none it
#: can run, given the installation's data directory and name.
Factory = Callable[[Policy, Path, str], Backend | None]


def local_backend(policy: Policy, data_dir: Path, installation: str) -> LocalBackend | None:
    """The backend for the policy's local pools (this machine), or None when it has none."""
    local = [spec for spec in policy.pools.values() if spec.backend == "local"]
    nodes = [n for spec in local for n in spec.nodes]
    if not nodes:
        return None
    tmp_dir = next((spec.tmp_dir for spec in local if spec.tmp_dir), None)
    n = nodes[0]
    gpus: dict[str, int] = {}
    for node in nodes:
        for model, count in node.gpus.items():
            gpus[model] = gpus.get(model, 0) + count
    declared = Resources.of(n.cpus, n.memory, gpus)
    accounts = PosixAccounts(existing=policy.identity.existing_accounts)
    return LocalBackend(
        data_dir / "local",
        n.name,
        declared,
        detect(),
        accounts,
        # The installation's own name, for its cgroups and run directories (DESIGN 5a).
        installation=installation,
        tmp_base=Path(tmp_dir) if tmp_dir else None,
    )


#: Every backend this service can run, by the name pools give in ``backend:``.
FACTORIES: Mapping[str, Factory] = {"local": local_backend, "slurm": slurm_backend}
#: Their classes, for what is known before one is built (``private_path``).
CLASSES: Mapping[str, type[Backend]] = {"local": LocalBackend, "slurm": SlurmBackend}


def private_path(backend: str, path: str) -> str | None:
    """Where ``path`` is private to each workload of a pool on ``backend`` (``Backend.
    private_path``); None for a backend this service does not run."""
    cls = CLASSES.get(backend)
    return None if cls is None else cls.private_path(path)


def backends_for(
    policy: Policy,
    data_dir: Path,
    factories: Mapping[str, Factory] = FACTORIES,
    *,
    installation: str | None = None,
) -> dict[str, Backend]:
    """The backends the policy's pools use that this service can run, by name.

    ``installation``: the service's own ``service.installation`` (the policy kept in the
    database has no ``service`` section: it is each service's own); None: the policy's, else
    derived from ``data_dir`` (``installation_of``)."""
    named = installation_of(installation or policy.service.installation, data_dir)
    out: dict[str, Backend] = {}
    for name in sorted({spec.backend for spec in policy.pools.values()}):
        factory = factories.get(name)
        backend = factory(policy, data_dir, named) if factory is not None else None
        if backend is not None:
            out[name] = backend
    return out
