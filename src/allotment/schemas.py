"""Request and response bodies of the HTTP API, shared by the service and ``client``.

Only pydantic here (no FastAPI, no SQLAlchemy), so that the client stays light enough to load
inside JupyterHub and inside user kernels.
"""

from __future__ import annotations

from datetime import datetime
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AccountOut",
    "AccountPatch",
    "ApplyResult",
    "FieldProblem",
    "Me",
    "MembershipIn",
    "MembershipOut",
    "Page",
    "PolicyIn",
    "PoolOut",
    "Problem",
    "ProfileOut",
    "UserOut",
    "WorkloadCreate",
    "WorkloadOut",
]

T = TypeVar("T")
Role = Literal["member", "manager", "viewer"]
State = Literal["pending", "admitted", "starting", "running", "stopping", "stopped", "failed"]
Kind = Literal["session", "job", "dask-scheduler", "dask-worker"]


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class FieldProblem(_Out):
    field: str = Field(description="Dotted path of the offending field, e.g. `body.cpus`.")
    message: str


class Problem(_Out):
    """An error, as RFC 9457 problem details."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str = Field(description="What went wrong and what to do, for a researcher.")
    errors: list[FieldProblem] | None = None


class Page(_Out, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(
        None, description="Pass as `cursor` to get the next page; empty on the last page."
    )


class MembershipOut(_Out):
    user: str
    account: str = Field(description="Account path.")
    role: Role
    origin: Literal["policy", "api"] = Field(
        description="`policy`: stated by the policy file; `api`: added by a manager."
    )


class MembershipIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role


class Me(_Out):
    name: str
    scopes: list[str]
    admin: bool
    memberships: list[MembershipOut]
    default_account: str | None


class AccountOut(_Out):
    path: str
    name: str
    parent: str | None
    shares: int
    description: str
    archived: bool


class AccountPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    shares: int | None = Field(None, ge=0)
    description: str | None = Field(None, max_length=1000)


class UserOut(_Out):
    name: str
    default_account: str | None
    memberships: list[MembershipOut]


class NodeOut(_Out):
    name: str
    cpus: float
    memory: int
    gpus: dict[str, int]


class PoolOut(_Out):
    name: str
    backend: str
    nodes: list[NodeOut]
    rates: dict[str, float | dict[str, float]]
    archived: bool


class ProfileOut(_Out):
    name: str
    display_name: str
    description: str
    pool: str
    environment: str
    cpus: float
    memory: int
    gpus: dict[str, int]
    options: dict[str, dict[str, float] | None]
    whole_node: bool
    max_runtime: int = Field(description="Seconds.")
    priority: int


class WorkloadCreate(BaseModel):
    """A new workload. Give a profile, or a size, or both (the size then adjusts the profile
    within its options)."""

    model_config = ConfigDict(extra="forbid")
    kind: Kind = "job"
    name: str = Field("", max_length=255)
    account: str | None = Field(
        None, description="Account to charge (name or path). Default: your default account."
    )
    profile: str | None = None
    pool: str | None = Field(None, description="Pool, when no profile is given.")
    cpus: float | None = Field(None, gt=0, le=100_000)
    memory: str | int | None = Field(None, description="Bytes, or a size such as `4G`.")
    gpus: int | dict[str, int] | None = None
    command: list[str] | None = Field(
        None, max_length=10_000, description="Program and arguments; required for a job."
    )
    max_runtime: str | int | None = Field(None, description="Seconds, or e.g. `2h`.")
    env: dict[str, str] = Field(
        {}, max_length=200, description="Environment variables for the workload."
    )
    workdir: str | None = Field(
        None, max_length=4096, description="Absolute working directory; default: your home."
    )
    stdout: str | None = Field(
        None,
        max_length=4096,
        description="Output file (relative to `workdir`); `%j` is the id, `%A` the array, "
        "`%a` the index. Default: `allot-%j.out` (`allot-%A_%a.out` in an array).",
    )
    stderr: str | None = Field(None, max_length=4096, description="Error file, as `stdout`.")
    array: str | None = Field(
        None,
        max_length=1000,
        description="Indices of a job array, e.g. `0-99`, `0-99:10` or `1,4,9`; one workload "
        "each, with ALLOT_ARRAY_TASK_ID set.",
    )
    after: int | None = Field(
        None, description="Start only after this workload has ended successfully."
    )


class WorkloadOut(_Out):
    id: int
    kind: Kind
    name: str
    user: str
    account: str
    pool: str | None
    profile: str | None
    cpus: float
    memory: int
    gpus: dict[str, int]
    status: State
    target: State
    reason: str
    command: list[str] | None
    max_runtime: int | None
    created_at: datetime
    updated_at: datetime
    #: While pending: place in its pool's queue and projected start (None: not yet known).
    position: int | None = None
    expected_start: datetime | None = None
    node: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    exit_code: int | None = None
    workdir: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    array_id: int | None = None
    array_index: int | None = None
    after: int | None = None


class PolicyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(description="The policy file's YAML text.", max_length=10_000_000)
    filename: str = Field("allotment.yaml", description="Name used in error messages.")
    dry_run: bool = Field(False, description="Say what would change without changing it.")


class ApplyResult(_Out):
    version: int | None = Field(description="Policy version now in force; None on a dry run.")
    changes: list[str]


class BudgetLeft(_Out):
    """An allocation's budget in the current period, and how long this profile could run on
    what is left."""

    account: str = Field(description="Account whose allocation carries the budget.")
    period: str
    amount: float
    spent: float
    left: float
    #: Hours this profile could run before the budget is spent; None when it costs nothing.
    hours_left: float | None
    hard_stop: bool


class QuotaLeft(_Out):
    """An allocation's guaranteed quota, less what its subtree holds now and this profile."""

    account: str
    cpus: float
    memory: int
    gpus: dict[str, int]


class ProfileQuote(_Out):
    profile: str
    display_name: str
    description: str
    pool: str
    environment: str
    cpus: float
    memory: int
    gpus: dict[str, int]
    #: Free in the pool now (summed over its nodes).
    free_cpus: float
    free_memory: int
    free_gpus: dict[str, int]
    #: True when a session of this profile would start at once.
    starts_now: bool
    #: Workloads waiting in the pool now; a new one joins behind them.
    queued: int
    #: Its place if it joined the queue now (1: next), None when it starts at once.
    position: int | None
    expected_start: datetime | None
    wait_seconds: float | None
    cost_per_hour: float
    budget: BudgetLeft | None
    quota: QuotaLeft | None
    #: Why it cannot start at all (budget spent with a hard stop), else None.
    blocked: str | None = None


class QuoteOut(_Out):
    account: str = Field(description="Account the quote charges.")
    #: Accounts the caller may charge; the launch form offers a choice when there are several.
    accounts: list[str]
    currency: str
    at: datetime
    profiles: list[ProfileQuote]


class MeterOut(_Out):
    """What a workload has cost so far and costs per hour, what its account has left, and
    what is about to happen to it (the JupyterLab meter shows this)."""

    workload: int
    status: State
    currency: str
    started_at: datetime | None
    ended_at: datetime | None
    #: Requested resources × wall time so far, at the pool's rates.
    cost: float
    cost_per_hour: float
    budget: BudgetLeft | None
    #: When it will be stopped by its maximum runtime, if it has one.
    stops_at: datetime | None
    warnings: list[str]
