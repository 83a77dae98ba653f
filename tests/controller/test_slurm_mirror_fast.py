"""The Slurm mirror in the fast tier: ``SlurmMirror`` against ``FakeSacctmgr``, a named fake of
Slurm's accounting that starts as the recorded cluster's bare accounting (``root`` alone; its
``ClusterName`` from ``tests/data/slurm/scontrol_config_clustername.txt``), applies the
``sacctmgr -i add …`` commands it is given and prints what it holds in the formats the mirror
reads. The real thing: tests/integration/test_slurm_mirror.py (root, a real cluster)."""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from allotment.backends.identity import mark, unix_name
from allotment.backends.slurm.runner import Completed, SlurmError, SlurmUnavailable
from allotment.controller.slurm_mirror import SlurmMirror
from tests.controller.conftest import Fast

DATA = Path(__file__).parent.parent / "data" / "slurm"
INSTALLATION = "fasttest"
OWNER = f"allotment:{INSTALLATION}"
C = "cluster=allottest"

POLICY = """
accounts:
  physics: {shares: 60}
  astro: {parent: physics, members: [ada]}
  hep: {parent: physics, members: [grace]}
  chemistry: {shares: 40, members: [ada]}
pools:
  cluster:
    backend: slurm
    partition: main
    nodes:
      - {name: n1, cpus: 2, memory: 4G}
      - {name: n2, cpus: 2, memory: 4G}
    rates: {cpu: 3.6}
profiles:
  small: {pool: cluster, size: {cpus: 1, memory: 1G}}
limits:
  default: {cpus: 2}
"""


@pytest.fixture
def policy() -> str:
    return POLICY


@pytest.fixture
def kind() -> str:
    return "slurm"


@dataclass
class FakePasswd:
    """The machine's accounts as ``pwd`` shows them: each hub user's ``jupyter-<name>``,
    marked as Allotment marks the accounts it makes."""

    pw_name: str
    pw_gecos: str


def fake_getpwnam(name: str) -> FakePasswd:
    for hub in ("ada", "grace"):
        if name == unix_name(hub):
            return FakePasswd(name, mark(hub))
    raise KeyError(name)


@pytest.fixture(autouse=True)
def accounts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Root's view of the hub users' POSIX accounts, without creating any."""
    # ``slurm_mirror`` calls these through the modules: patched there, for this test only.
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(pwd, "getpwnam", fake_getpwnam)


@dataclass
class FakeSacctmgr:
    """Slurm's accounting as ``sacctmgr`` shows and changes it, and the commands it was given;
    ``down``: every command fails as one does while slurmdbd does not answer."""

    #: Account → (parent, fairshare, organization, GrpTRES).
    accounts: dict[str, tuple[str, int, str, str]] = field(
        default_factory=lambda: {"root": ("", 1, "root", "")}
    )
    #: (account, user) → (fairshare, GrpTRES).
    users: dict[tuple[str, str], tuple[int, str]] = field(
        default_factory=lambda: {("root", "root"): (1, "")}
    )
    commands: list[tuple[str, ...]] = field(default_factory=list)
    down: bool = False
    #: Users whose ``add user`` Slurm refuses (as it does a user slurmctld does not know).
    refused: set[str] = field(default_factory=set)

    async def run(
        self,
        argv: Sequence[str],
        *,
        user: str | None = None,
        stdin: bytes | None = None,
        check: bool = True,
    ) -> Completed:
        argv = tuple(argv)
        self.commands.append(argv)
        if self.down:
            raise SlurmUnavailable("sacctmgr: error: Unable to connect to database")
        if argv[2:4] == ("add", "user") and argv[4] in self.refused:
            raise SlurmError(argv, 1, f" There is no uid for user '{argv[4]}'")
        return Completed(argv, 0, self.answer(argv).encode(), b"", 0.01)

    def changes(self) -> list[tuple[str, ...]]:
        return [a for a in self.commands if a[:2] == ("sacctmgr", "-i")]

    def answer(self, argv: tuple[str, ...]) -> str:
        if argv[0] == "scontrol":
            return (DATA / "scontrol_config_clustername.txt").read_text()
        if argv[0] in ("sacct", "squeue"):
            return ""
        if argv[:5] == ("sacctmgr", "-P", "-n", "show", "assoc"):
            rows = [f"{a}|{p}||{fs}|{tres}|||" for a, (p, fs, _, tres) in self.accounts.items()]
            rows += [f"{a}||{u}|{fs}|{tres}|||" for (a, u), (fs, tres) in self.users.items()]
            return "\n".join(rows) + "\n"
        if argv[:5] == ("sacctmgr", "-P", "-n", "show", "account"):
            return "".join(f"{a}|{org}\n" for a, (_, _, org, _) in self.accounts.items())
        if argv[:5] == ("sacctmgr", "-P", "-n", "show", "tres"):
            return "cpu|\nmem|\nenergy|\nnode|\nbilling|\nfs|disk\nvmem|\npages|\n"
        if argv[:5] == ("sacctmgr", "-P", "-n", "show", "user"):
            return "root|root\n"
        if argv[:4] == ("sacctmgr", "-i", "add", "account"):
            opts = dict(a.split("=", 1) for a in argv[5:])
            for name in argv[4].split(","):
                self.accounts[name] = (
                    opts["parent"],
                    int(opts["fairshare"]),
                    opts["organization"].lower(),
                    opts.get("GrpTRES", ""),
                )
            return ""
        if argv[:4] == ("sacctmgr", "-i", "add", "user"):
            opts = dict(a.split("=", 1) for a in argv[5:])
            for account in opts["account"].split(","):
                self.users[(account, argv[4])] = (1, opts.get("GrpTRES", ""))
            return ""
        raise AssertionError(f"the fake does not know {argv}")


def said(caplog: pytest.LogCaptureFixture, words: str) -> bool:
    return any(words in r.getMessage() for r in caplog.records)


def added(argv: Sequence[str]) -> str:
    return " ".join(argv[2:])


async def test_a_pass_adds_the_tree_and_a_second_finds_nothing_to_do(fast: Fast) -> None:
    slurm = FakeSacctmgr()
    mirror = SlurmMirror(fast.controller.db, fast.clock, INSTALLATION, slurm)  # type: ignore[arg-type]
    done = await mirror.sync_once()
    ada, grace = unix_name("ada"), unix_name("grace")
    assert [added(a) for a in slurm.changes()] == [
        f"add account chemistry {C} parent=root fairshare=40 organization={OWNER} "
        "description=made by Allotment",
        f"add account physics {C} parent=root fairshare=60 organization={OWNER} "
        "description=made by Allotment",
        f"add account physics.astro,physics.hep {C} parent=physics fairshare=1 "
        f"organization={OWNER} description=made by Allotment",
        f"add user {ada} account=chemistry,physics.astro {C} GrpTRES=cpu=2",
        f"add user {grace} account=physics.hep {C} GrpTRES=cpu=2",
    ]
    assert done == [
        "add account chemistry (parent root, fairshare 40)",
        "add account physics (parent root, fairshare 60)",
        "add account physics.astro (parent physics, fairshare 1)",
        "add account physics.hep (parent physics, fairshare 1)",
        f"add user {ada} to chemistry",
        f"add user {ada} to physics.astro",
        f"add user {grace} to physics.hep",
    ]
    assert mirror.conflicts == []
    slurm.commands.clear()
    assert await mirror.sync_once() == []
    assert slurm.changes() == []
    assert [a[:5] for a in slurm.commands] == [
        ("sacctmgr", "-P", "-n", "show", "assoc"),
        ("sacctmgr", "-P", "-n", "show", "account"),
        ("sacctmgr", "-P", "-n", "show", "tres"),
        ("sacctmgr", "-P", "-n", "show", "user"),
    ]


async def test_an_account_allotment_did_not_make_is_left_alone_and_said(fast: Fast) -> None:
    slurm = FakeSacctmgr()
    slurm.accounts["chemistry"] = ("root", 40, "someone else", "")
    mirror = SlurmMirror(fast.controller.db, fast.clock, INSTALLATION, slurm)  # type: ignore[arg-type]
    done = await mirror.sync_once()
    assert not any("chemistry" in a[4] for a in slurm.changes() if a[3] == "account")
    assert "add account chemistry (parent root, fairshare 40)" not in done
    assert len(mirror.conflicts) == 1
    assert (
        "account chemistry exists in Slurm but Allotment did not make it" in (mirror.conflicts[0])
    )


async def test_ensure_user_adds_one_association_once(fast: Fast) -> None:
    slurm = FakeSacctmgr()
    mirror = SlurmMirror(fast.controller.db, fast.clock, INSTALLATION, slurm)  # type: ignore[arg-type]
    await mirror.sync_once()
    slurm.commands.clear()
    assert await mirror.ensure_user("hep", "someone") == ["add user someone to hep"]
    assert [added(a) for a in slurm.changes()] == [f"add user someone account=hep {C}"]
    slurm.commands.clear()
    assert await mirror.ensure_user("hep", "someone") == []
    assert slurm.changes() == []


async def test_slurm_unavailable_is_said_once_and_the_pass_tried_again(
    fast: Fast, caplog: pytest.LogCaptureFixture
) -> None:
    slurm = FakeSacctmgr(down=True)
    mirror = SlurmMirror(
        fast.controller.db,
        fast.clock,
        INSTALLATION,
        slurm,  # type: ignore[arg-type]
        check_interval=0.01,
        full_interval=0.01,
    )
    caplog.set_level(logging.INFO, "allotment.controller")
    task = asyncio.create_task(mirror.run())
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while len(slurm.commands) < 3 and loop.time() < deadline:
            await asyncio.sleep(0.01)
        down = [r for r in caplog.records if "not mirrored" in r.getMessage()]
        assert len(down) == 1 and len(slurm.commands) >= 3
        slurm.down = False
        while not slurm.changes() and loop.time() < deadline:
            await asyncio.sleep(0.01)
        mirror.poke()
        while not said(caplog, "Slurm answers again") and loop.time() < deadline:
            await asyncio.sleep(0.01)
    finally:
        while not task.done():  # 3.11's wait_for may drop a cancellation: ask until it ends
            task.cancel()
            await asyncio.wait([task], timeout=0.05)
    assert said(caplog, "Slurm answers again: accounts are mirrored")
    assert len(slurm.changes()) == 5


async def test_a_refused_command_is_logged_and_the_others_are_done(
    fast: Fast, caplog: pytest.LogCaptureFixture
) -> None:
    grace = unix_name("grace")
    slurm = FakeSacctmgr(refused={grace})
    mirror = SlurmMirror(fast.controller.db, fast.clock, INSTALLATION, slurm)  # type: ignore[arg-type]
    done = await mirror.sync_once()
    assert f"add user {grace} to physics.hep" not in done
    assert f"add user {unix_name('ada')} to physics.astro" in done
    assert said(caplog, f"could not add user {grace} to physics.hep")
    slurm.refused.clear()  # the next pass adds what is still missing, and only that
    slurm.commands.clear()
    assert await mirror.sync_once() == [f"add user {grace} to physics.hep"]
