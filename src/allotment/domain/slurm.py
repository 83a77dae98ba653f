"""How Allotment's names appear in Slurm, and back (a rule of the domain: the policy check
applies it to the file, the Slurm backend to jobs and accounts).

Slurm accounts are flat names with a parent (``sacctmgr``), lowercased; Allotment's are paths.
A path maps to its components joined by dots (``physics/lab-a`` → ``physics.lab-a``): readable in
``squeue`` and ``sshare``, and unique, since the policy check refuses two paths with one name.
Jobs Allotment submits are named after their installation and workload, so that each
installation finds its own after a crash and the usage import never counts them twice.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = [
    "OURS",
    "allotment_account",
    "job_name",
    "slurm_account",
    "workload_of",
]

#: Jobs any Allotment installation submitted: ``allot.<installation>.<workload id>``.
OURS = re.compile(r"^allot\.[a-z0-9._-]+\.\d+$")


def slurm_account(path: str) -> str:
    """The Slurm account an Allotment account path is mirrored as."""
    return path.strip("/").replace("/", ".").lower()


def allotment_account(name: str, known_paths: Iterable[str]) -> str | None:
    """The Allotment account a Slurm account name stands for, among ``known_paths``."""
    name = name.lower()
    for path in known_paths:
        if slurm_account(path) == name:
            return path
    return None


def job_name(installation: str, workload: int) -> str:
    """The Slurm job name of a workload of ``installation``."""
    return f"allot.{installation}.{workload}"


def workload_of(name: str, installation: str) -> int | None:
    """The workload a job of ``installation`` runs, from its Slurm job name; None for a job
    this installation did not submit."""
    prefix = f"allot.{installation}."
    if not name.startswith(prefix):
        return None
    rest = name[len(prefix) :]
    return int(rest) if rest.isdigit() else None
