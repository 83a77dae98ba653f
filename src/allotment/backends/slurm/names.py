"""Slurm's names of Allotment's accounts and jobs: the rule is the domain's
(``domain/slurm.py``, which the policy check also applies); here for the backend's readers."""

from __future__ import annotations

from allotment.domain.slurm import OURS, allotment_account, job_name, slurm_account, workload_of

__all__ = ["OURS", "allotment_account", "job_name", "slurm_account", "workload_of"]
