"""The quote of a profile on a Slurm pool in the fast tier: the API asks ``FakeSlurm``, a
named fake of the Slurm backend's runner answering ``sinfo --json`` and ``sbatch --test-only``
with what a real Slurm printed (``tests/data/slurm/``), and ``controller/quote.py`` takes its
free resources and expected start instead of projecting a queue. The real thing:
tests/e2e/test_slurm_session.py (root, a real cluster)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from allotment.backends.fake import FakeBackend
from allotment.backends.local.posix import PosixAccount
from allotment.backends.slurm.runner import Completed, SlurmRunner, SlurmUnavailable
from tests.controller.conftest import Fast

DATA = Path(__file__).parent.parent / "data" / "slurm"

POLICY = """
accounts:
  lab: {members: [alice]}
pools:
  cluster:
    backend: slurm
    partition: main
    nodes:
      - {name: n1, cpus: 2, memory: 4G}
      - {name: n2, cpus: 2, memory: 4G}
      - {name: n3, cpus: 2, memory: 4G}
    rates: {cpu: 3.6}
profiles:
  small: {pool: cluster, size: {cpus: 1, memory: 1G}}
"""


class FakeSlurm(SlurmRunner):
    """The Slurm backend's runner, answering from the recordings: ``sinfo`` the file
    ``sinfo``, ``sbatch --test-only`` (on standard error, as Slurm does) the file
    ``test_only``; ``down``: slurmctld does not answer. Records the commands it was given."""

    def __init__(self) -> None:
        super().__init__(None, None, 5.0)
        self.sinfo = "sinfo_idle.json"
        self.test_only = "sbatch_test_only_now.txt"
        self.down = False
        self.commands: list[tuple[str, ...]] = []

    async def run(
        self,
        argv: Sequence[str],
        *,
        user: PosixAccount | None = None,
        stdin: bytes | None = None,
        check: bool = True,
    ) -> Completed:
        argv = tuple(argv)
        self.commands.append(argv)
        if self.down:
            raise SlurmUnavailable("sinfo: error: Unable to contact slurm controller")
        if argv[:2] == ("sinfo", "--json"):
            return Completed(argv, 0, (DATA / self.sinfo).read_bytes(), b"", 0.05)
        if argv[:2] == ("sbatch", "--test-only"):
            return Completed(argv, 0, b"", (DATA / self.test_only).read_bytes(), 0.05)
        raise AssertionError(f"the fake does not know {argv}")


@pytest.fixture
def policy() -> str:
    return POLICY


@pytest.fixture
def kind() -> str:
    return "slurm"


@pytest.fixture
def slurm() -> FakeSlurm:
    return FakeSlurm()


@pytest.fixture
def backend(slurm: FakeSlurm) -> FakeBackend:
    """The fake backend, carrying the runner the quote asks as the Slurm backend's."""
    fake = FakeBackend()
    fake.runner = slurm  # type: ignore[attr-defined]
    return fake


def at_recorded(fast: Fast, text: str) -> None:
    """The clock at the moment a recording names (slurmctld's local time)."""
    fast.clock.advance(
        (datetime.fromisoformat(text).astimezone() - fast.clock.now()).total_seconds()
    )


async def quote(fast: Fast) -> dict[str, Any]:
    async with fast.client() as c:
        r = await c.get("quote", params={"account": "lab", "profile": "small"})
    assert r.status_code == 200, r.text
    (small,) = r.json()["profiles"]
    found: dict[str, Any] = small
    return found


async def test_an_idle_cluster_starts_it_now(fast: Fast, slurm: FakeSlurm) -> None:
    at_recorded(fast, "2026-12-02T15:28:31")
    q = await quote(fast)
    assert q["starts_now"] and q["position"] is None
    assert q["free_cpus"] == 6.0  # three idle nodes of two CPUs
    assert q["wait_seconds"] == 1.0
    assert ("sinfo", "--json") in slurm.commands
    (ask,) = [a for a in slurm.commands if a[0] == "sbatch"]
    assert ask[:2] == ("sbatch", "--test-only")
    assert ("--partition", "main") == ask[ask.index("--partition") : ask.index("--partition") + 2]


async def test_a_full_cluster_quotes_slurms_expected_start(fast: Fast, slurm: FakeSlurm) -> None:
    slurm.test_only = "sbatch_test_only_wait.txt"
    at_recorded(fast, "2026-12-02T15:28:32")
    q = await quote(fast)
    assert not q["starts_now"] and q["position"] == 1
    assert q["wait_seconds"] == 11 * 60  # 15:39:32, as sbatch --test-only said
    assert q["blocked"] is None


async def test_slurm_not_answering_quotes_no_start(fast: Fast, slurm: FakeSlurm) -> None:
    slurm.down = True
    q = await quote(fast)
    assert not q["starts_now"]
    assert q["expected_start"] is None and q["wait_seconds"] is None
    assert q["free_cpus"] == 0
