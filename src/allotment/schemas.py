"""Request and response bodies of the HTTP API, shared by the service and ``client``.

Only pydantic here (no FastAPI, no SQLAlchemy), so that the client stays light enough to load
inside JupyterHub and inside user kernels.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag

__all__ = [
    "AccountArchived",
    "AccountCreate",
    "AccountOut",
    "AccountPatch",
    "AuditOut",
    "DaskAdapt",
    "DaskClusterCreate",
    "DaskClusterOut",
    "DaskCredentials",
    "DaskScale",
    "DaskSchedulerOrders",
    "DaskSchedulerReport",
    "DaskWorkerSize",
    "MeterCluster",
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
    "UsageReportOut",
    "UsageRowOut",
    "UserOut",
    "WorkloadCreate",
    "WorkloadOut",
]

T = TypeVar("T")
Role = Literal["member", "manager", "viewer"]
State = Literal["pending", "admitted", "starting", "running", "stopping", "stopped", "failed"]
Kind = Literal["session", "job", "dask-scheduler", "dask-worker"]
#: Largest id or workload number the API takes (the databases' 64-bit integers).
MAX_ID = 2**63 - 1


def _storable(text: str) -> str:
    if "\0" in text:
        raise ValueError("may not contain a NUL character (no program or file name can)")
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            raise ValueError("is not valid Unicode (it holds a lone surrogate)") from None
    return text


#: Text that reaches a program, a file name or the database: no NUL, valid Unicode.
Text = Annotated[str, AfterValidator(_storable)]
#: A count of GPUs of one model.
GpuCount = Annotated[int, Field(ge=0, le=4096)]


def _shape(value: object) -> str:
    # Names the branch of a union, so that an error says `body.gpus.by_model.a100`.
    if isinstance(value, str):
        return "text"
    return "by_model" if isinstance(value, dict) else "number"


#: A size or a duration: a number, or text such as `4G` or `2h`.
NumberOrText = Annotated[
    Annotated[int, Field(ge=0, le=MAX_ID), Tag("number")]
    | Annotated[Text, Field(max_length=64), Tag("text")],
    Discriminator(_shape),
]
Gpus = Annotated[
    Annotated[GpuCount, Tag("number")]
    | Annotated[dict[Annotated[Text, Field(max_length=64)], GpuCount], Tag("by_model")],
    Discriminator(_shape),
]


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
    origin: Literal["policy", "api"] = Field(
        "policy",
        description="`policy`: stated by the policy file; `api`: created by a manager (an "
        "apply leaves it alone until the file names it).",
    )


class AccountCreate(BaseModel):
    """A sub-account a manager creates (``POST accounts``); it charges, shares and is
    scheduled like an account of the policy file, which leaves it alone until it names it."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$",
        description="Unique in the whole tree, as in the policy file: lower-case letters, "
        "digits, `.`, `_` and `-`, at most 64.",
    )
    parent: Text | None = Field(
        None,
        max_length=1024,
        description="Name or path of the parent; only administrators create roots.",
    )
    shares: int = Field(1, ge=0, le=1_000_000)
    description: Text = Field("", max_length=1000)


class AccountArchived(_Out):
    path: str
    outcome: Literal["archived", "removed"] = Field(
        description="`archived`: history refers to it, so it is kept (hidden, unusable); "
        "`removed`: nothing did, so it is gone."
    )


class AuditOut(_Out):
    """One change: who did what to which account, when, and the values before and after."""

    id: int
    at: datetime
    actor: str = Field(description="A hub user, `admin:<token>`, or `allot serve` at start.")
    action: str = Field(description="e.g. `account.create`, `member.add`, `policy.apply`.")
    account: str = Field(description="The account path it touches; empty for site-wide.")
    target: str
    before: dict[str, object] | None
    after: dict[str, object] | None


class AccountPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    shares: int | None = Field(None, ge=0, le=1_000_000)
    description: Text | None = Field(None, max_length=1000)


class UserOut(_Out):
    name: str
    default_account: str | None
    memberships: list[MembershipOut]


class NodeOut(_Out):
    name: str
    cpus: float
    memory: int
    gpus: dict[str, int]
    #: The backend's word for it now (idle, mixed, drained, down…), where it reports one.
    state: str | None = None
    #: Why it is drained or down.
    reason: str | None = None


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
    within its options).

    Only jobs come through ``POST workloads`` from users: sessions come from the hub's
    spawner, and Dask schedulers and workers from endpoints that build their commands."""

    model_config = ConfigDict(extra="forbid")
    kind: Kind = Field(
        "job",
        description="`job`. `session`: the hub's spawner only. Dask kinds have their own "
        "endpoints.",
    )
    name: Text = Field("", max_length=255)
    account: Text | None = Field(
        None,
        max_length=1000,
        description="Account to charge (name or path). Default: your default account.",
    )
    profile: Text | None = Field(None, max_length=255)
    pool: Text | None = Field(None, max_length=255, description="Pool, when no profile is given.")
    cpus: float | None = Field(None, gt=0, le=100_000)
    memory: NumberOrText | None = Field(
        None, description="Bytes, or a size such as `4G`; at least 16M."
    )
    gpus: Gpus | None = Field(
        None, description='A count (with a profile), or counts by model, e.g. `{"a100": 1}`.'
    )
    command: list[Text] | None = Field(
        None,
        max_length=10_000,
        description="Program and arguments; required for a job. Each argument may hold "
        "128 KiB, the command and `env` together 1 MiB (the kernel's limits).",
    )
    max_runtime: NumberOrText | None = Field(
        None, description="Seconds, or e.g. `2h`; at least 1 s, at most 365 days."
    )
    env: dict[Annotated[Text, Field(max_length=1024)], Text] = Field(
        {}, max_length=200, description="Environment variables for the workload."
    )
    workdir: Text | None = Field(
        None, max_length=4096, description="Absolute working directory; default: your home."
    )
    stdout: Text | None = Field(
        None,
        max_length=4096,
        description="Output file (relative to `workdir`); `%j` is the id, `%A` the array, "
        "`%a` the index. Default: `allot-%j.out` (`allot-%A_%a.out` in an array).",
    )
    stderr: Text | None = Field(None, max_length=4096, description="Error file, as `stdout`.")
    array: Text | None = Field(
        None,
        max_length=1000,
        description="Indices of a job array, e.g. `0-99`, `0-99:10` or `1,4,9`; one workload "
        "each, with ALLOT_ARRAY_TASK_ID set.",
    )
    after: int | None = Field(
        None, ge=1, le=MAX_ID, description="Start only after this workload has ended successfully."
    )
    nodes: int = Field(
        1,
        ge=1,
        le=1024,
        description="Nodes the job spans (a cluster's pool only); `cpus`, `memory` and `gpus` "
        "are then per node, as in Slurm, and the workload holds and is charged the total.",
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
    #: Nodes it spans; ``cpus``, ``memory`` and ``gpus`` above are the total over them.
    nodes: int = 1
    #: Where its server is reached (a session on a cluster's node: that node's address).
    host: str | None = None


class PolicyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: Text = Field(description="The policy file's YAML text.", max_length=10_000_000)
    filename: Text = Field(
        "allotment.yaml", max_length=255, description="Name used in error messages."
    )
    dry_run: bool = Field(False, description="Say what would change without changing it.")


class ApplyResult(_Out):
    version: int | None = Field(description="Policy version now in force; None on a dry run.")
    changes: list[str]
    warnings: list[str] = Field(
        [],
        description="What the policy changes that you may not mean, e.g. who runs as which "
        "POSIX account; empty when nothing.",
    )


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
    #: Dask clusters the session owns, running: their workers and cost per hour.
    clusters: list[MeterCluster] = []


class UsageRowOut(_Out):
    """One row of a usage report: what a user, account, pool, profile, day or week used."""

    key: str = Field(
        description="The user, account path, pool or profile name, day (`2026-12-02`) or ISO "
        "week (`2026-W49`, from Monday); `total` for the total."
    )
    cost: float = Field(description="Charged, in the currency.")
    cost_micros: int = Field(description="Charged, in millionths of the currency (exact).")
    cpu_hours: float = Field(description="Requested CPU core-hours.")
    memory_gib_hours: float = Field(description="Requested GiB-hours of memory.")
    gpu_hours: float = Field(description="Requested GPU-hours.")
    used_cpu_hours: float = Field(description="Measured CPU core-hours, where measured.")
    efficiency: float | None = Field(
        description="Used over requested CPU-hours; empty when no CPU was requested."
    )


class UsageReportOut(_Out):
    """Usage over whole days in the site's time zone, grouped, with its total (of every
    page)."""

    by: Literal["user", "account", "profile", "pool", "day", "week"]
    currency: str
    time_zone: str = Field(description="The site's time zone, where the days start.")
    first_day: date
    last_day: date
    account: str | None = Field(description="Only this account's subtree; empty: any.")
    user: str | None = Field(description="Only this user's usage; empty: any.")
    items: list[UsageRowOut]
    total: UsageRowOut
    next_cursor: str | None = Field(
        None, description="Pass as `cursor` to get the next page; empty on the last page."
    )


class BudgetIn(BaseModel):
    """A budget a manager (or administrator) sets: `PUT accounts/{path}/budget`."""

    model_config = ConfigDict(extra="forbid")

    amount: float = Field(
        ge=0,
        le=1e12,
        allow_inf_nan=False,
        description="Spending limit per period, in the currency (at most 10^12).",
    )
    period: str = Field(
        "month",
        pattern=r"^(day|week|month|quarter|year|[1-9][0-9]{0,3}d)$",
        description="`day`, `week`, `month`, `quarter`, `year` (in the site's time zone), or "
        "`Nd`: the last N days, rolling.",
    )
    alerts: list[float] | None = Field(
        None, description="Fractions at which managers are told. Empty: 50, 80 and 90 %."
    )
    hard_stop: bool = Field(True, description="At 100 %: hold new work, stop running work.")
    grace: str | int = Field("15m", description="Warning before a spent budget stops work.")
    step_down: str | None = Field(
        None, description="Profile running work steps down to instead of being stopped."
    )
    overdraft: float = Field(
        0,
        ge=0,
        le=1e12,
        allow_inf_nan=False,
        description="How much beyond the amount may be spent (at most 10^12).",
    )


class BudgetOut(_Out):
    """A budget in force, with what its account's subtree spent in the current period."""

    account: str = Field(description="Account path; the budget covers its subtree.")
    pool: str | None = Field(description="Pool it limits; empty: all pools.")
    currency: str
    period: str
    period_start: datetime
    period_end: datetime
    amount: float
    spent: float
    left: float = Field(description="Amount less spent; negative within an overdraft.")
    fraction: float = Field(description="Spent over amount.")
    hard_stop: bool
    grace: float = Field(description="Seconds of warning before running work is stopped.")
    step_down: str | None
    overdraft: float
    alerts: list[float]
    origin: Literal["policy", "api"] = Field(
        description="`policy`: from the policy file; `api`: set by a manager."
    )
    blocked: bool = Field(description="Spent (with any overdraft): new work is held.")
    reason: str | None = Field(description="What a held workload is told; empty unless blocked.")


# --- Dask clusters (allotment.dask.AllotmentCluster, `allot dask`, api/routes/dask.py) ---

DaskClusterState = Literal["starting", "running", "stopping", "stopped", "failed"]


#: A package's name or version as Dask reports them (``2026.8.0``, ``3.12.1.final.0``): they
#: reach reasons that terminals show, so no other character.
VersionText = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._+-]+$")]


class DaskAdapt(BaseModel):
    """Adaptive bounds: the scheduler asks for workers as its load needs, within these."""

    model_config = ConfigDict(extra="forbid")
    minimum: int = Field(0, ge=0, le=10_000)
    maximum: int = Field(ge=0, le=10_000)


class DaskScale(BaseModel):
    """A fixed number of workers (ends adaptive scaling)."""

    model_config = ConfigDict(extra="forbid")
    workers: int = Field(ge=0, le=10_000)


class DaskClusterCreate(BaseModel):
    """A new Dask cluster. Its workers' size starts from a profile and may be adjusted within
    its options, as a session's."""

    model_config = ConfigDict(extra="forbid")
    name: Text | None = Field(
        None, max_length=63, description="Unique among your running clusters. Default: made up."
    )
    account: Text | None = Field(None, max_length=1000, description="Account to charge.")
    profile: Text | None = Field(
        None, max_length=255, description="Workers' profile. Default: the policy's `dask.profile`."
    )
    cpus: float | None = Field(None, gt=0, le=100_000, description="CPUs of each worker.")
    memory: NumberOrText | None = Field(None, description="Memory of each worker, e.g. `4G`.")
    gpus: int | None = Field(None, ge=0, le=4096, description="GPUs of each worker.")
    threads: int | None = Field(
        None, ge=1, le=1024, description="Threads of each worker. Default: its CPUs, rounded up."
    )
    python: Text = Field(
        max_length=4096,
        description="Absolute path of the interpreter the scheduler and workers run: the "
        "notebook's own (`sys.executable`), so that they have its packages.",
    )
    versions: dict[VersionText, VersionText] = Field(
        {},
        max_length=16,
        description="The client's versions of `python`, `dask` and `distributed`: the "
        "scheduler and workers must match them.",
    )
    workers: int = Field(0, ge=0, le=10_000, description="Workers to start with.")
    adapt: DaskAdapt | None = Field(None, description="Scale adaptively within these bounds.")
    shutdown_on_close: bool = Field(
        True, description="Stop it when its client stops heartbeating. False: it outlives it."
    )
    session: int | None = Field(
        None,
        ge=1,
        le=MAX_ID,
        description="Your session (its workload id, `ALLOT_WORKLOAD_ID`) that owns it: the "
        "cluster stops when that session ends.",
    )


class DaskWorkerSize(_Out):
    cpus: float
    memory: int
    gpus: int
    threads: int


class DaskClusterOut(_Out):
    id: int
    name: str
    user: str
    account: str
    profile: str
    state: DaskClusterState
    reason: str
    worker: DaskWorkerSize
    #: Workers asked for (by `scale`, or by the scheduler within `adapt`).
    workers: int
    adapt: DaskAdapt | None
    #: Workers running, and asked for but not yet running (waiting in the queue or starting).
    running: int
    requested: int
    #: Why the first waiting worker waits, and when it is expected to start.
    waiting_reason: str | None = None
    expected_start: datetime | None = None
    #: The scheduler's workload.
    scheduler: int | None
    #: The scheduler's comm address (`tls://host:port`) once it runs.
    address: str | None
    #: The dashboard through the hub-authenticated proxy (only its owner may open it).
    dashboard_link: str | None
    session: int | None
    shutdown_on_close: bool
    #: What the scheduler and its running workers cost per hour together.
    cost_per_hour: float
    currency: str
    idle_since: datetime | None
    created_at: datetime
    ended_at: datetime | None


class DaskCredentials(_Out):
    """What a client needs to connect: the cluster's own certificate and key (only its owner
    gets them)."""

    address: str | None
    tls_cert: str
    tls_key: str


class DaskSchedulerReport(BaseModel):
    """What a cluster's scheduler tells the service (with the cluster's own token)."""

    model_config = ConfigDict(extra="forbid")
    address: Text = Field(max_length=1024, description="Comm address, `tls://host:port`.")
    dashboard: Text | None = Field(None, max_length=1024, description="`https://host:port`.")
    #: Workers connected, by name (each worker's name is its workload id).
    workers: list[Annotated[Text, Field(max_length=64)]] = Field([], max_length=100_000)
    clients: int = Field(0, ge=0, description="Clients connected (the scheduler's own excluded).")
    tasks: int = Field(0, ge=0, description="Tasks not yet finished.")
    #: Workers the scheduler would run for its load (`Scheduler.adaptive_target()`).
    adaptive_target: int = Field(0, ge=0)
    #: Workers it could close without losing data, best first (`workers_to_close()`).
    idle_workers: list[Annotated[Text, Field(max_length=64)]] = Field([], max_length=100_000)
    versions: dict[VersionText, VersionText] = Field({}, max_length=16)


class DaskSchedulerOrders(_Out):
    """The service's answer to a report: workers to retire gracefully, by name."""

    retire: list[str] = []
    #: Seconds until the next report.
    report_every: float = 5.0


class MeterCluster(_Out):
    """A Dask cluster a session's meter adds to its own line."""

    name: str
    workers: int
    cost_per_hour: float
