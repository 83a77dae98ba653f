"""Slurm's names of Allotment's accounts and jobs (``domain/slurm.py``)."""

from __future__ import annotations

from allotment.domain.slurm import OURS, allotment_account, job_name, slurm_account, workload_of


def test_account_paths_become_flat_lowercase_names_and_back() -> None:
    assert slurm_account("physics/lab-a") == "physics.lab-a"
    assert slurm_account("/inst/") == "inst"
    paths = ["physics", "physics/lab-a", "chem"]
    assert allotment_account("PHYSICS.LAB-A", paths) == "physics/lab-a"
    assert allotment_account("bio", paths) is None


def test_jobs_are_named_after_their_installation_and_workload() -> None:
    name = job_name("main", 42)
    assert name == "allot.main.42" and OURS.match(name)
    assert workload_of(name, "main") == 42
    assert workload_of(name, "other") is None
    assert workload_of("allot.main.x", "main") is None
    assert not OURS.match("my allot.main.1")
