"""Who a hub user runs as: the POSIX accounts every backend that runs work as its users'
accounts shares (this machine's, a Slurm cluster's nodes). The rules live with the local
backend, which creates the accounts (``backends/local/posix.py``); the controller reads them
from here without knowing that backend by name."""

from __future__ import annotations

from allotment.backends.local.posix import (
    PosixAccount,
    PosixAccounts,
    legacy_unix_name,
    mark,
    refusal,
    unix_name,
)

__all__ = ["PosixAccount", "PosixAccounts", "legacy_unix_name", "mark", "refusal", "unix_name"]
