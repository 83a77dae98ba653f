"""A submission, checked: what a request for a new workload asks, against what the caller may
charge and what the policy offers, as the new workload's values or the reason it is refused.

Pure: the API route authorises the caller, hands the request and the catalog here, then writes
what comes back. The catalog's entries are read through the small protocols below, so the
domain knows nothing of the database that loads them. Every refusal is a ``PublicError`` whose
message is written for the researcher who sent the request.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import ClassVar, Protocol

from allotment.domain.accounts import is_within
from allotment.domain.bounds import check_command, check_cpus, check_memory, check_runtime
from allotment.domain.permissions import Principal
from allotment.domain.profiles import Node, ProfileOffer, choose_size, fits_some_node
from allotment.domain.quantities import parse_bytes, parse_duration
from allotment.domain.resources import Resources
from allotment.domain.workloads import DASK_KINDS, WorkloadState, parse_array
from allotment.errors import Conflict, Forbidden, InvalidRequest, NotFound

__all__ = [
    "WAITING",
    "AccountRef",
    "CatalogView",
    "NewWorkload",
    "PoolRef",
    "PrivateDir",
    "ProfileRef",
    "Request",
    "Submission",
    "Submitter",
    "charged_account",
    "check_kind",
    "sentence",
    "submission",
]

#: The reason a new workload shows until the scheduler first decides about it.
WAITING = "waiting for the scheduler"


class Request(Protocol):
    """What a request for a new workload asks (the API's ``WorkloadCreate`` is one)."""

    @property
    def kind(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def account(self) -> str | None: ...
    @property
    def profile(self) -> str | None: ...
    @property
    def pool(self) -> str | None: ...
    @property
    def cpus(self) -> float | None: ...
    @property
    def memory(self) -> int | str | None: ...
    @property
    def gpus(self) -> int | Mapping[str, int] | None: ...
    @property
    def command(self) -> Sequence[str] | None: ...
    @property
    def max_runtime(self) -> int | str | None: ...
    @property
    def env(self) -> Mapping[str, str]: ...
    @property
    def workdir(self) -> str | None: ...
    @property
    def stdout(self) -> str | None: ...
    @property
    def stderr(self) -> str | None: ...
    @property
    def array(self) -> str | None: ...
    @property
    def after(self) -> int | None: ...
    @property
    def nodes(self) -> int: ...


class AccountRef(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def path(self) -> str: ...
    @property
    def archived(self) -> bool: ...


class PoolRef(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def nodes(self) -> Sequence[Node]: ...
    @property
    def backend(self) -> str: ...


class _ProfileSpec(Protocol):
    @property
    def max_runtime(self) -> int | None: ...


class ProfileRef(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def pool(self) -> PoolRef: ...
    @property
    def spec(self) -> _ProfileSpec: ...
    @property
    def offer(self) -> ProfileOffer: ...
    #: Account paths the profile is offered to (and their subtrees); empty: everyone.
    @property
    def accounts(self) -> Sequence[str]: ...


class CatalogView(Protocol):
    """The accounts, pools and profiles a submission is checked against."""

    @property
    def pools(self) -> Mapping[str, PoolRef]: ...
    @property
    def profiles(self) -> Mapping[str, ProfileRef]: ...
    def account(self, ref: str) -> AccountRef | None: ...


class Submitter(Protocol):
    """Who submits: the caller as the API authenticated them (the API's ``Caller`` is one)."""

    @property
    def principal(self) -> Principal: ...
    @property
    def user_id(self) -> int: ...
    @property
    def default_account(self) -> str | None: ...
    #: The hub's spawner acts for this user: it may start sessions (it builds their command).
    @property
    def via_spawner(self) -> bool: ...


#: The directory ``path`` lies under that a workload on ``pool`` gets a private copy of (gone
#: when it ends, so output there is lost), or None. The backend knows; the domain asks.
PrivateDir = Callable[[PoolRef, str], str | None]


@dataclass(frozen=True, slots=True)
class NewWorkload:
    """A workload about to be recorded: its columns, as the database stores them.

    Its fields are the workload columns a submission sets, named as the table names them;
    ``columns()`` is the row to insert, and the API answers from the same value.
    """

    kind: str
    name: str
    user_id: int
    account_id: int
    pool_id: int
    #: None: sized by hand on a pool, not from a profile.
    profile_id: int | None
    millicpus: int
    memory: int
    gpus: dict[str, int]
    command: list[str] | None
    #: Seconds; None: no limit.
    max_runtime: int | None
    idempotency_key: str | None
    created_at: datetime
    updated_at: datetime
    #: None: no variables beyond the ones every workload gets.
    env: dict[str, str] | None = None
    workdir: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    #: Starts only after this workload has ended successfully.
    after_id: int | None = None
    #: Nodes it spans; the resources above are the total over all of them.
    nodes: int = 1
    target: int = int(WorkloadState.RUNNING)
    status: int = int(WorkloadState.PENDING)
    reason: str = WAITING

    def columns(self) -> dict[str, object]:
        """The row to insert."""
        return {name: getattr(self, name) for name in _COLUMNS}

    # The columns the service fills in later: a new workload has no queue place, node, start,
    # end or array yet, and reads as its row will until then.
    position: ClassVar[None] = None
    expected_start: ClassVar[None] = None
    node: ClassVar[None] = None
    started_at: ClassVar[None] = None
    ended_at: ClassVar[None] = None
    exit_code: ClassVar[None] = None
    array_id: ClassVar[None] = None
    array_index: ClassVar[None] = None
    placement: ClassVar[None] = None


_COLUMNS = tuple(f.name for f in fields(NewWorkload))


@dataclass(frozen=True, slots=True)
class Submission:
    workload: NewWorkload
    account: AccountRef
    pool: PoolRef
    profile: ProfileRef | None
    #: The indices of a job array (one workload each), or None for a single workload.
    indices: list[int] | None


def sentence(text: str) -> str:
    """``text`` as a sentence: a capital first and a full stop last."""
    return text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")


def check_kind(submitter: Submitter, kind: str) -> None:
    """Users submit jobs; each other kind comes with a command the service or hub builds."""
    if kind == "session" and not submitter.via_spawner:
        raise Forbidden(
            "Sessions are started from JupyterHub, whose spawner builds their command: start "
            "one from the hub's home page. Submit batch work as a `job`."
        )
    if kind in DASK_KINDS:
        raise InvalidRequest(
            f"A {kind} is not submitted through `POST workloads`: Dask clusters get an endpoint "
            "of their own that builds their commands. Submit batch work as a `job`."
        )


def charged_account(catalog: CatalogView, submitter: Submitter, ref: str | None) -> AccountRef:
    """The account a new workload charges: the one named, else the user's default or only."""
    p = submitter.principal
    if ref is None:
        ref = submitter.default_account
    if ref is None:
        spendable = p.spendable_accounts()
        if len(spendable) != 1:
            raise InvalidRequest(
                f"Say which account to charge (`account`); you may charge: {', '.join(spendable)}."
                if spendable
                else "You are not a member of any account, so you cannot start workloads yet. "
                "Ask a manager of your lab to add you."
            )
        ref = spendable[0]
    account = catalog.account(ref)
    if account is None or not p.can_see_account(account.path):
        raise NotFound(f"There is no account '{ref}' that you can see.")
    if not p.can_submit_to(account.path):
        mine = ", ".join(sorted({m.account for m in p.memberships if m.role != "viewer"}))
        raise Forbidden(
            f"You may not charge account '{account.path}'. "
            + (f"You may charge: {mine}." if mine else "Ask its manager to add you as a member.")
        )
    if account.archived:
        raise Conflict(f"Account '{account.path}' is archived; charge another account.")
    return account


def _placement(
    catalog: CatalogView, body: Request, account: AccountRef
) -> tuple[PoolRef, ProfileRef | None, int | None]:
    """The pool and profile a request names, and the profile's longest run."""
    if body.profile is not None:
        profile = catalog.profiles.get(body.profile)
        if profile is None:
            raise NotFound(f"There is no profile '{body.profile}'; `allot profiles` lists them.")
        if profile.accounts and not any(is_within(account.path, a) for a in profile.accounts):
            raise Forbidden(f"Profile '{profile.name}' is not offered to account '{account.path}'.")
        return profile.pool, profile, profile.spec.max_runtime
    if body.pool is not None:
        pool = catalog.pools.get(body.pool)
        if pool is None:
            raise NotFound(f"There is no pool '{body.pool}'; `allot pools` lists them.")
        return pool, None, None
    raise InvalidRequest("Name a `profile` (see `allot profiles`) or a `pool` and a size.")


def _size(offer: ProfileOffer | None, body: Request) -> Resources:
    try:
        memory = None if body.memory is None else parse_bytes(body.memory)
        gpus_n = body.gpus if isinstance(body.gpus, int) else None
        if offer is not None:
            if body.gpus is not None and not isinstance(body.gpus, int):
                raise ValueError("with a profile, give `gpus` as a count")
            return choose_size(offer, body.cpus, memory, gpus_n)
        if body.cpus is None or memory is None:
            raise ValueError("without a profile, give both `cpus` and `memory`")
        if gpus_n:
            raise ValueError('without a profile, give `gpus` by model, e.g. {"a100": 1}')
        by_model = body.gpus if body.gpus is not None and not isinstance(body.gpus, int) else {}
        return Resources.of(body.cpus, memory, by_model)
    except ValueError as e:
        raise InvalidRequest(sentence(str(e))) from None


def _max_runtime(body: Request, allowed: int | None) -> int | None:
    if body.max_runtime is None:
        return allowed
    try:
        asked = parse_duration(body.max_runtime)
    except ValueError as e:
        raise InvalidRequest(sentence(str(e))) from None
    check_runtime(asked)
    if allowed is not None and asked > allowed:
        raise InvalidRequest(
            f"Profile '{body.profile}' allows at most {allowed} s; you asked {asked} s."
        )
    return asked


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
#: Names a shell refuses to take from the environment (dash: OPTIND must be a number; bash,
#: where /bin/sh is bash: read-only variables): the job would end before its command ran.
_SHELL_OWNED = frozenset(
    {"OPTIND", "PPID", "UID", "EUID", "SHELLOPTS", "BASHOPTS", "BASH_VERSINFO", "BASH_ARGV0"}
)


def _check_job(body: Request, pool: PoolRef, private_dir: PrivateDir) -> None:
    """What a batch job adds to a workload: environment, directory, output files."""
    if body.kind == "job" and not body.command:
        raise InvalidRequest(
            'A job needs a `command`: the program and its arguments, e.g. ["python", "train.py"].'
        )
    check_command(body.command, body.env)
    for name in body.env:
        if not _ENV_NAME.match(name):
            raise InvalidRequest(
                f"`env` has {name!r}, which is not a variable name (letters, digits and _, "
                "not starting with a digit)."
            )
        if name in _SHELL_OWNED:
            raise InvalidRequest(
                f"`env` has {name}, which the shell that starts the job keeps for itself; "
                "choose another name."
            )
    if body.workdir is not None and not body.workdir.startswith("/"):
        raise InvalidRequest(
            f"`workdir` must be an absolute path (got {body.workdir!r}), e.g. /home/alice/project."
        )
    for field_name, path in (
        ("workdir", body.workdir or ""),
        ("stdout", body.stdout or ""),
        ("stderr", body.stderr or ""),
    ):
        private = private_dir(pool, path)
        if private is not None:
            raise InvalidRequest(
                f"`{field_name}` is {path}, under {private}: every job has a private "
                f"{private} of its own, gone when it ends, so nothing there can be found "
                "again. Use your home or a project directory."
            )


def submission(
    body: Request,
    submitter: Submitter,
    catalog: CatalogView,
    now: datetime,
    idempotency_key: str | None,
    private_dir: PrivateDir,
) -> Submission:
    """The new workload ``body`` asks for, checked; raises a ``PublicError`` saying what is
    wrong, in the order a person would fix it: who may submit, where, how big, how long, what.

    Whether ``body.after`` names a workload the submitter can see is the caller's to check (it
    needs the database); ``after_id`` carries it through.
    """
    check_kind(submitter, body.kind)
    account = charged_account(catalog, submitter, body.account)
    pool, profile, allowed = _placement(catalog, body, account)
    size = _size(profile.offer if profile else None, body)
    check_cpus(size.millicpus)
    check_memory(size.memory)
    problem = fits_some_node(size, pool.nodes)
    if problem:
        raise InvalidRequest(sentence(problem))
    nodes = body.nodes
    if nodes > 1:
        if nodes > len(pool.nodes):
            raise InvalidRequest(
                f"Pool '{pool.name}' has {len(pool.nodes)} node"
                f"{'' if len(pool.nodes) == 1 else 's'}; you asked for {nodes}. A job spans "
                "several nodes only on a cluster's pool (`backend: slurm`)."
            )
        if pool.backend != "slurm":
            raise InvalidRequest(
                f"Pool '{pool.name}' runs each workload on one machine ({pool.backend}); a "
                "job spans several nodes only on a cluster's pool (`backend: slurm`)."
            )
        # The size is per node, as in Slurm; the workload holds (and is charged) the total.
        size = Resources(
            size.millicpus * nodes,
            size.memory * nodes,
            {m: n * nodes for m, n in size.gpus.items()},
        )
    max_runtime = _max_runtime(body, allowed)
    _check_job(body, pool, private_dir)
    indices = None
    if body.array is not None:
        try:
            indices = parse_array(body.array)
        except ValueError as e:
            raise InvalidRequest(sentence(str(e))) from None
    workload = NewWorkload(
        kind=body.kind,
        name=body.name,
        user_id=submitter.user_id,
        account_id=account.id,
        pool_id=pool.id,
        profile_id=profile.id if profile else None,
        millicpus=size.millicpus,
        memory=size.memory,
        gpus=dict(size.gpus),
        command=None if body.command is None else list(body.command),
        max_runtime=max_runtime,
        idempotency_key=idempotency_key,
        created_at=now,
        updated_at=now,
        env=dict(body.env) or None,
        workdir=body.workdir,
        stdout=body.stdout,
        stderr=body.stderr,
        after_id=body.after,
        nodes=nodes,
    )
    return Submission(workload, account, pool, profile, indices)
