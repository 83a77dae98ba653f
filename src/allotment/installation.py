"""An installation's name: what everything it creates on a machine carries (DESIGN 5a).

Two installations on one machine (a department's service and an ``allot up`` hub, or a test run
beside a real one) each number their workloads from 1. Whatever one makes outside its own data
directory (control groups, private /tmp directories) is therefore named after the installation
as well as the workload, so that neither ever finds, stops or reaps the other's.

The name is ``service.installation`` in the policy where an administrator set one, else derived
from the data directory: the directory's last component as a slug and 8 hex digits of a hash of
its resolved path (``service-3f9a01c2``), so it is stable across restarts, short, and distinct
for different directories. Moving the data directory changes a derived name; workloads running
then are still found (each placement records the name it started under), but set the name in
the policy first where that matters.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

__all__ = ["NAME_PATTERN", "check_name", "installation_of", "name_for"]

#: Lower-case letters, digits and dashes, starting with a letter: safe as a control group's and
#: a directory's name, and readable in ``/proc/<pid>/cgroup``.
NAME_PATTERN = r"^[a-z][a-z0-9-]{0,39}$"
#: Names the local backend used before installations were named (``allotment/w<id>``,
#: ``allotment/helpers``): an installation may not be called like one of them.
_TAKEN = re.compile(r"^(w[0-9]+|helpers)$")
_SLUG_LENGTH = 20


def check_name(name: str) -> str:
    """``name`` when it may name an installation; else ValueError saying why."""
    if not re.fullmatch(NAME_PATTERN, name):  # not match: its $ lets a final newline through
        raise ValueError(
            f"installation name {name!r}: use 1 to 40 lower-case letters, digits and dashes, "
            "starting with a letter"
        )
    if _TAKEN.match(name):
        raise ValueError(
            f"installation name {name!r} is taken by the names of an earlier version "
            "(w<number>, helpers); choose another"
        )
    return name


def name_for(data_dir: Path) -> str:
    """The name of the installation whose data directory is ``data_dir``."""
    resolved = data_dir.expanduser().resolve()
    slug = re.sub(r"[^a-z0-9]+", "-", resolved.name.lower()).strip("-")[:_SLUG_LENGTH].strip("-")
    if not slug[:1].isalpha():  # empty ("/"), or a number: a name starts with a letter
        slug = f"i-{slug}".strip("-")
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:8]
    return f"{slug}-{digest}"


def installation_of(configured: str | None, data_dir: Path) -> str:
    """The installation's name: its ``service.installation`` where set, else ``name_for`` its
    data directory. Every part that names something after the installation asks here."""
    return configured or name_for(data_dir)
