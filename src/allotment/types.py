"""Shared aliases, so that signatures say what a string or an int means."""

from __future__ import annotations

from typing import NewType

__all__ = ["AccountPath", "UserName", "WorkloadId"]

#: Slash path of an account, e.g. ``physics/lab-a/proj-x``.
AccountPath = NewType("AccountPath", str)
#: A JupyterHub user name.
UserName = NewType("UserName", str)
#: Database id of a workload.
WorkloadId = NewType("WorkloadId", int)
