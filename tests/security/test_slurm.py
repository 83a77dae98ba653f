"""A tenant against the Slurm path (issue 15's hostile review): the service acts as root
(``scancel``, ``sacctmgr``, Slurm's programs) on what a user's processes could have touched.

- sbatch runs as the user, whose processes could write into its output: one job id or nothing,
  and root never signals or adopts a job that does not bear the workload's name and user;
- the policy names ``slurm.bin_dir`` and ``slurm.conf``: root runs and reads them only where
  root alone may write.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from allotment.backends.base import LaunchSpec, Placement
from allotment.backends.slurm.backend import SlurmBackend
from allotment.backends.slurm.commands import parse_sbatch
from allotment.backends.slurm.runner import untrusted
from allotment.domain.resources import Resources
from tests.backends.conftest import new_id, slurm

__all__ = ["new_id", "slurm"]  # the fixtures, for the tests below

MIB = 2**20


def spec(wid: int, command: list[str], workdir: Path, **kw: Any) -> LaunchSpec:
    user = kw.pop("user", "alice")
    return LaunchSpec(wid, user, "lab", command, Resources.of(1, 256 * MIB), workdir=str(workdir))


async def placed(backend: SlurmBackend, s: LaunchSpec) -> Placement:
    return [p async for p in backend.start(s)][-1]


def test_sbatch_output_that_is_not_exactly_one_job_id_is_refused() -> None:
    for tampered in (b"", b"1200010\n4242\n", b"4242 1200010\n", b"-1\n", b"12;a b\n"):
        with pytest.raises(ValueError):
            parse_sbatch(tampered)
    assert parse_sbatch(b"1200011;allottest\n") == 1200011


def test_root_runs_slurm_only_from_paths_nobody_else_may_write(tmp_path: Path) -> None:
    """The policy names ``slurm.bin_dir`` and ``slurm.conf``; the service runs them as root."""

    safe = tmp_path / "safe"
    safe.mkdir(mode=0o755)
    conf = safe / "slurm.conf"
    conf.write_text("ClusterName=x\n")
    conf.chmod(0o644)
    assert untrusted(str(conf)) is None
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)  # anyone may replace what is in it
    (open_dir / "sbatch").write_text("")
    assert "may be written by others" in str(untrusted(str(open_dir / "sbatch")))
    conf.chmod(0o666)
    assert "may be written by others" in str(untrusted(str(conf)))
    conf.chmod(0o644)
    if os.geteuid() == 0:
        os.chown(conf, 65534, 65534)
        assert "belongs to uid 65534" in str(untrusted(str(conf)))
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)  # like /var/tmp: others cannot replace root's entries
    (sticky / "mine").mkdir(mode=0o755)
    assert untrusted(str(sticky / "mine")) is None


async def test_a_job_that_is_not_the_workloads_is_never_stopped_nor_adopted(
    slurm: SlurmBackend, shared: Path, new_id: Callable[[], int]
) -> None:
    """The service signals as root: a placement naming another user's job (its id recorded
    from a tampered sbatch output, or a job named like the workload by someone else) must not
    let one user stop another's work, nor a resumed start adopt it."""
    victim, thief = new_id(), new_id()
    theirs = await placed(slurm, spec(victim, ["sleep", "300"], shared, user="bob"))
    assert theirs.get("running")
    forged = {**theirs, "job_name": f"allot.{slurm.installation}.{thief}", "user": "jupyter-x"}
    await slurm.stop(thief, forged, grace=1)
    assert (await slurm.poll({victim: theirs}))[victim].alive, "bob's job was stopped"
    # A resumed start of the thief's workload finds no job of its own under the victim's name.
    posing = {k: v for k, v in theirs.items() if k != "job_id"}
    posing["user"] = "jupyter-x"
    assert await slurm._find(posing) is None
    await slurm.stop(victim, theirs, grace=1)
