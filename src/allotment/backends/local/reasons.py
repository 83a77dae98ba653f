"""What a workload that failed before its command ran says, in its user's terms.

The launcher ends with a status of its own (``process.SETUP_FAILURES``) when it cannot set a
workload up; "could not open its output files" alone leaves a researcher guessing which files,
where, and as whom. These name them, from the workload's placement (``workdir``, ``stdout``,
``stderr``, ``user``: the POSIX account that tried).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from allotment.backends.local.process import under_private

__all__ = ["setup_failure"]

#: The launcher's statuses explained here; the others keep their short text.
OUTPUT_FILES = 253
WORKING_DIRECTORY = 254


def setup_failure(code: int, placement: Mapping[str, Any]) -> str | None:
    """The reason for launcher status ``code`` naming the files, the directory and the account
    (ending "(exit status N)"); None for a status this does not explain."""
    account = placement.get("user") or "the job's account"
    workdir = str(placement.get("workdir") or "")
    if code == OUTPUT_FILES:
        files = list(
            dict.fromkeys(str(placement[k]) for k in ("stdout", "stderr") if k in placement)
        )
        directories = list(dict.fromkeys(os.path.dirname(f) for f in files))
        if len(directories) == 1:
            named = " and ".join(os.path.basename(f) for f in files) + f" in {directories[0]}"
        else:
            named = " and ".join(files) or f"its output files in {workdir}"
        return (
            f"could not open its output files (exit status {code}): {account} may not create "
            f"or append to {named}. Submit from a directory {account} can write to, or name "
            "files it can write with --output and --error."
        )
    private = under_private(workdir)
    if code == WORKING_DIRECTORY and private:
        return (
            f"could not enter its working directory (exit status {code}): {workdir} is under "
            f"{private}, and every workload has a private one of its own. Submit "
            "from your home or a project directory, or name one with --chdir."
        )
    if code == WORKING_DIRECTORY:
        return (
            f"could not enter its working directory (exit status {code}): {account} may not "
            f"enter {workdir or 'it'}. Submit from a directory {account} can reach, or name one "
            "with --chdir."
        )
    return None
