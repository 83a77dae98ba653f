"""Submission checks (``domain/submission.py``) without a service: each refusal, and the new
workload's values. The API tests check the same messages through HTTP."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from allotment.db.tables import WORKLOADS
from allotment.domain.accounts import Role
from allotment.domain.permissions import Principal
from allotment.domain.profiles import Node, ProfileOffer, Range
from allotment.domain.resources import Resources
from allotment.domain.submission import (
    AccountRef,
    NewWorkload,
    PoolRef,
    Submission,
    submission,
)
from allotment.domain.workloads import WorkloadState
from allotment.errors import Conflict, Forbidden, InvalidRequest, NotFound
from tests.support.builders import NOW, G, principal


@dataclass(frozen=True)
class Account:
    id: int
    path: str
    archived: bool = False


@dataclass(frozen=True)
class Pool:
    id: int
    name: str
    nodes: tuple[Node, ...]
    backend: str = "local"


@dataclass(frozen=True)
class Spec:
    max_runtime: int | None


@dataclass(frozen=True)
class Profile:
    id: int
    name: str
    pool: Pool
    spec: Spec
    offer: ProfileOffer
    accounts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Catalog:
    accounts: Mapping[str, Account]
    pools: Mapping[str, Pool]
    profiles: Mapping[str, Profile]

    def account(self, ref: str) -> AccountRef | None:
        return self.accounts.get(ref)


@dataclass(frozen=True)
class Caller:
    principal: Principal
    user_id: int = 7
    default_account: str | None = None
    via_spawner: bool = False


@dataclass(frozen=True)
class Body:
    kind: str = "job"
    name: str = ""
    account: str | None = None
    profile: str | None = None
    pool: str | None = None
    cpus: float | None = None
    memory: int | str | None = None
    gpus: int | dict[str, int] | None = None
    command: list[str] | None = field(default_factory=lambda: ["python", "train.py"])
    max_runtime: int | str | None = None
    env: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    array: str | None = None
    after: int | None = None
    nodes: int = 1


GPU = Pool(1, "gpu", (Node("n1", Resources.of(16, 64 * G, {"a100": 2})),))
SMALL = Profile(
    3,
    "small",
    GPU,
    Spec(3600),
    ProfileOffer("small", Resources.of(2, 4 * G), {"cpus": Range(1, 8)}),
    accounts=("physics",),
)
CATALOG = Catalog(
    {
        "physics/lab-a": Account(10, "physics/lab-a"),
        "physics": Account(9, "physics"),
        "old": Account(11, "old", archived=True),
        "chem": Account(12, "chem"),
    },
    {"gpu": GPU},
    {"small": SMALL},
)


def alice(*memberships: tuple[str, Role]) -> Caller:
    return Caller(principal("alice", *memberships))


MEMBER = alice(("physics/lab-a", Role.MEMBER), ("old", Role.MEMBER))


def submit(caller: Caller = MEMBER, private: str | None = None, **asked: Any) -> Submission:
    asked.setdefault("account", "physics/lab-a")
    return submission(
        Body(**asked), caller, CATALOG, NOW, None, lambda pool, path: private if path else None
    )


def refused(error: type[Exception], caller: Caller = MEMBER, **asked: Any) -> str:
    with pytest.raises(error) as e:
        submit(caller, **asked)
    return str(e.value)


def test_a_profile_gives_the_size_and_the_longest_run() -> None:
    sub = submit(profile="small", cpus=4)
    w = sub.workload
    assert (w.millicpus, w.memory, w.gpus, w.max_runtime) == (4000, 4 * G, {}, 3600)
    assert (w.account_id, w.pool_id, w.profile_id, w.user_id) == (10, 1, 3, 7)
    assert (w.status, w.target) == (WorkloadState.PENDING, WorkloadState.RUNNING)
    assert w.reason == "waiting for the scheduler"
    assert sub.indices is None and sub.profile is SMALL


def test_columns_are_the_tables() -> None:
    w = submit(pool="gpu", cpus=1, memory="1G", gpus={"a100": 1}, array="0-3").workload
    columns = w.columns()
    assert set(columns) <= set(WORKLOADS.c.keys())
    assert columns["gpus"] == {"a100": 1} and columns["after_id"] is None
    assert NewWorkload.position is None and w.started_at is None


def test_an_array_is_its_indices() -> None:
    assert submit(pool="gpu", cpus=1, memory="1G", array="0-6:3").indices == [0, 3, 6]
    assert refused(InvalidRequest, pool="gpu", cpus=1, memory="1G", array="x").endswith(".")


def test_the_account_charged() -> None:
    chem = alice(("chem", Role.MEMBER))
    assert submit(chem, account=None, pool="gpu", cpus=1, memory="1G").account.path == "chem"
    assert "you may charge: old, physics/lab-a" in refused(InvalidRequest, account=None)
    assert "not a member of any account" in refused(InvalidRequest, alice(), account=None)
    assert refused(NotFound, account="nowhere") == "There is no account 'nowhere' that you can see."
    assert refused(Forbidden, alice(("physics/lab-a", Role.VIEWER)), account="physics/lab-a") == (
        "You may not charge account 'physics/lab-a'. Ask its manager to add you as a member."
    )
    assert "is archived" in refused(Conflict, account="old")


def test_kinds_users_may_not_submit() -> None:
    assert "started from JupyterHub" in refused(Forbidden, kind="session", profile="small")
    assert "Dask clusters" in refused(InvalidRequest, kind="dask-worker", profile="small")
    spawner = Caller(MEMBER.principal, via_spawner=True)
    assert submit(spawner, kind="session", profile="small", command=None).workload.kind == (
        "session"
    )


def test_where_it_runs() -> None:
    assert "no profile 'big'" in refused(NotFound, profile="big")
    assert "no pool 'cpu'" in refused(NotFound, pool="cpu")
    assert refused(InvalidRequest) == (
        "Name a `profile` (see `allot profiles`) or a `pool` and a size."
    )
    chem = alice(("chem", Role.MEMBER))
    assert refused(Forbidden, chem, account="chem", profile="small") == (
        "Profile 'small' is not offered to account 'chem'."
    )


def test_size() -> None:
    assert refused(InvalidRequest, pool="gpu", cpus=1) == (
        "Without a profile, give both `cpus` and `memory`."
    )
    assert "by model" in refused(InvalidRequest, pool="gpu", cpus=1, memory="1G", gpus=1)
    assert "as a count" in refused(InvalidRequest, profile="small", gpus={"a100": 1})
    assert "allows 1 to 8" in refused(InvalidRequest, profile="small", cpus=9)
    assert "at least" in refused(InvalidRequest, pool="gpu", cpus=0.001, memory="1G")
    assert "at least" in refused(InvalidRequest, pool="gpu", cpus=1, memory=1024)
    assert refused(InvalidRequest, pool="gpu", cpus=64, memory="1G").endswith(".")


def test_runtime() -> None:
    assert submit(profile="small", max_runtime="30m").workload.max_runtime == 1800
    assert refused(InvalidRequest, profile="small", max_runtime="2h") == (
        "Profile 'small' allows at most 3600 s; you asked 7200 s."
    )
    assert "is 0" in refused(InvalidRequest, profile="small", max_runtime=0)
    assert "not a duration" in refused(InvalidRequest, profile="small", max_runtime="soon")


def test_job_fields() -> None:
    assert "needs a `command`" in refused(InvalidRequest, profile="small", command=None)
    assert "`command` is empty" in refused(InvalidRequest, profile="small", command=[""])
    assert "not a variable name" in refused(InvalidRequest, profile="small", env={"1X": "y"})
    assert "keeps for itself" in refused(InvalidRequest, profile="small", env={"OPTIND": "1"})
    assert "absolute path" in refused(InvalidRequest, profile="small", workdir="here")
    w = submit(profile="small", env={"A": "1"}, workdir="/home/alice", stdout="o.txt").workload
    assert (w.env, w.workdir, w.stdout, w.stderr) == ({"A": "1"}, "/home/alice", "o.txt", None)
    assert submit(profile="small").workload.env is None


def test_private_directories_are_refused() -> None:
    with pytest.raises(InvalidRequest) as e:
        submit(private="/tmp", profile="small", stdout="/tmp/out")
    assert "`stdout` is /tmp/out, under /tmp: every job has a private /tmp" in str(e.value)


def test_a_pool_the_protocols_accept() -> None:
    pool: PoolRef = GPU
    assert pool.backend == "local"


def test_what_execve_and_the_calendar_would_refuse() -> None:
    big = "x" * (128 * 1024)
    assert refused(InvalidRequest, profile="small", command=["python", big]) == (
        "`command[1]` is 128.0 KiB; the limit for one argument or environment variable is "
        "128 KiB (the kernel's). Pass large inputs in a file."
    )
    many = ["y" * 100_000] * 11
    assert refused(InvalidRequest, profile="small", command=many).startswith(
        "`command` and `env` are 1.0 MiB; the limit for a command plus its environment is 1 MiB."
    )
    assert refused(InvalidRequest, pool="gpu", cpus=1, memory=100, max_runtime=1) == (
        "`memory` is 100 bytes; a workload needs at least 16 MiB to start."
    )
    assert "is 1 byte;" in refused(InvalidRequest, pool="gpu", cpus=1, memory=1)
    assert refused(InvalidRequest, profile="small", max_runtime="400d") == (
        "`max_runtime` is 34560000 s; the limit is 31536000 s (365 days)."
    )


def test_a_job_spans_nodes_only_where_the_pool_has_them() -> None:
    assert "has 1 node; you asked for 2" in refused(InvalidRequest, profile="small", nodes=2)


def test_the_size_is_per_node_and_the_workload_holds_the_total() -> None:
    cluster = Pool(
        2, "cluster", tuple(Node(f"n{i}", Resources.of(4, 8 * G)) for i in (1, 2, 3)), "slurm"
    )
    catalog = Catalog(CATALOG.accounts, {"cluster": cluster}, {})
    sub = submission(
        Body(account="physics/lab-a", pool="cluster", cpus=2, memory="1G", nodes=3),
        MEMBER,
        catalog,
        NOW,
        None,
        lambda pool, path: None,
    )
    w = sub.workload
    assert (w.nodes, w.millicpus, w.memory) == (3, 6000, 3 * G)


def test_only_a_slurm_pool_takes_a_multi_node_job() -> None:
    elsewhere = Pool(4, "other", tuple(Node(f"n{i}", Resources.of(4, 8 * G)) for i in (1, 2)))
    catalog = Catalog(CATALOG.accounts, {"other": elsewhere}, {})
    with pytest.raises(InvalidRequest) as e:
        submission(
            Body(account="physics/lab-a", pool="other", cpus=1, memory="1G", nodes=2),
            MEMBER,
            catalog,
            NOW,
            None,
            lambda pool, path: None,
        )
    assert "runs each workload on one machine (local)" in str(e.value)
