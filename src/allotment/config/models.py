"""Pydantic models of ``allotment.yaml``.

The ``description`` of every field becomes the JSON schema and ``docs/reference/config.md``;
write them for an administrator reading the reference.
"""

from __future__ import annotations

from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer

from allotment.domain.quantities import (
    format_bytes,
    format_duration,
    parse_bytes,
    parse_duration,
)
from allotment.installation import NAME_PATTERN, check_name

__all__ = [
    "AccountSpec",
    "AccountingSpec",
    "AllocationSpec",
    "BudgetSpec",
    "DaskSpec",
    "Bytes",
    "Duration",
    "LimitSpec",
    "LimitsSpec",
    "NodeSpec",
    "NotificationsSpec",
    "OptionRange",
    "Policy",
    "PoolSpec",
    "ProfileOptions",
    "ProfileSpec",
    "RatesSpec",
    "SchedulingSpec",
    "ServiceSettings",
    "SizeSpec",
    "SlurmSpec",
    "SmtpSpec",
    "UserSpec",
    "WebhookSpec",
]

Bytes = Annotated[
    int,
    BeforeValidator(parse_bytes),
    PlainSerializer(format_bytes, return_type=str),
    Field(json_schema_extra={"examples": ["4G", "512M"]}),
]
Duration = Annotated[
    int,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    Field(json_schema_extra={"examples": ["8h", "30m", "1h30m"]}),
]
Name = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]
NonNegative = Annotated[float, Field(ge=0)]
#: An amount of money: finite, and small enough to count in millionths in 64 bits.
Money = Annotated[float, Field(ge=0, le=1e12, allow_inf_nan=False)]
InstallationName = Annotated[
    str, Field(json_schema_extra={"pattern": NAME_PATTERN}), AfterValidator(check_name)
]
GpuCounts = dict[str, Annotated[int, Field(ge=0)]]


def _time_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r}; use an IANA name such as 'UTC' or 'Europe/Berlin'"
        ) from None
    return name


TimeZone = Annotated[str, AfterValidator(_time_zone)]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServiceSettings(_Spec):
    """How the Allotment service runs. Each key can be overridden by an environment variable."""

    data_dir: str | None = Field(
        None,
        description="Directory for the SQLite database and the admin token. "
        "Default: `$ALLOTMENT_DATA_DIR`, else `~/.local/share/allotment` "
        "(`/var/lib/allotment-service` as root: `/var/lib/allotment` is `allot up`'s).",
    )
    installation: InstallationName | None = Field(
        None,
        description="This installation's name on the machine: every control group and "
        "scratch directory it makes carries it, so two installations (or a test run beside a "
        "real one) never touch each other's workloads. 1 to 40 lower-case letters, digits and "
        "dashes, starting with a letter. Default: derived from `data_dir` (its last part and "
        "a hash of its path, e.g. `service-3f9a01c2`); set it before moving `data_dir`.",
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the database, e.g. "
        "`postgresql+asyncpg://allotment@localhost/allotment`. Default: SQLite in `data_dir`. "
        "Prefer `$ALLOTMENT_DATABASE_URL` for URLs that carry a password.",
    )
    base_url: str = Field(
        "/services/allotment/",
        description="Path prefix the service is served under (JupyterHub services live under "
        "`/services/<name>/`).",
    )
    hub_api_url: str = Field(
        "http://127.0.0.1:8081/hub/api",
        description="JupyterHub's REST API, used to verify tokens. "
        "Set by JupyterHub as `$JUPYTERHUB_API_URL` when it manages the service.",
    )
    token_cache_seconds: int = Field(
        60, ge=0, description="How long a verified token is trusted before asking the hub again."
    )
    max_request_body: Bytes = Field(
        "1M",
        validate_default=True,
        ge=1024,
        description="Largest request body the API reads, e.g. `1M`; a larger one is refused "
        "(413) before it is read. A submission's command plus environment may hold at most 1 MiB "
        "whatever this says; raise it for policy files larger than this (`PUT policy`).",
    )


class AccountSpec(_Spec):
    """A node of the accounts tree. The key is the account's name, unique in the whole tree."""

    parent: str | None = Field(
        None, description="Name (or path) of the parent account; empty for a root."
    )
    shares: int = Field(
        1, ge=0, description="Fair-share weight among its siblings. 0 means it only borrows."
    )
    description: str = Field("", description="Shown in dashboards and `allot accounts`.")
    managers: list[str] = Field(
        [], description="Users who administer this account and everything below it."
    )
    members: list[str] = Field(
        [], description='Users who may charge work to this account; `"*"`: every hub user.'
    )
    viewers: list[str] = Field(
        [], description="Users who may see this subtree's workloads and usage, never spend."
    )
    budget: BudgetSpec | None = Field(
        None,
        description="Spending limit across all pools, for this account and everything below "
        "it (an allocation's `budget` limits one pool). Empty: none.",
    )


class UserSpec(_Spec):
    """Settings of one JupyterHub user. Users need no entry to log in; memberships give access."""

    default_account: str | None = Field(
        None, description="Account charged when the user names none. Default: their only one."
    )
    email: str | None = Field(
        None,
        pattern=r"^[^@\s]+@[^@\s]+$",
        description="Where budget alerts to this user go. Default: `<user>@<email_domain>` when "
        "`notifications.email_domain` is set, else the address the hub knows, else none.",
    )


class NodeSpec(_Spec):
    """One machine of a pool."""

    name: Name = Field(description="Host name of the node.")
    cpus: float = Field(gt=0, description="CPU cores the pool may hand out on this node.")
    memory: Bytes = Field(description="Memory the pool may hand out, e.g. `512G`.")
    gpus: GpuCounts = Field({}, description="GPUs by model, e.g. `{a100: 4}`.")


class RatesSpec(_Spec):
    """Prices per resource-hour, in the policy's currency."""

    cpu: NonNegative = Field(0, description="Price of one CPU core for one hour.")
    memory: NonNegative = Field(0, description="Price of one GiB of memory for one hour.")
    gpu: dict[str, NonNegative] = Field({}, description="Price of one GPU for one hour, by model.")


class PoolSpec(_Spec):
    """Capacity behind one backend."""

    backend: Literal["local", "slurm"] = Field(
        "local", description="`local`: this machine. `slurm`: a Slurm partition."
    )
    partition: str | None = Field(None, description="Slurm partition (slurm pools only).")
    qos: str | None = Field(
        None, description="Slurm QOS every job of the pool is submitted with (slurm pools only)."
    )
    nodes: list[NodeSpec] = Field(min_length=1, description="The machines of the pool.")
    rates: RatesSpec = Field(RatesSpec(), description="Prices per resource-hour.")
    tmp_dir: str | None = Field(
        None,
        pattern=r"^/",
        description="Local pools: the directory under which each workload gets its private "
        "/tmp, on disk (Slurm's job_container/tmpfs `BasePath`). Best a file system of its own: "
        "what fills it then cannot fill the one holding the database. Empty: in the service's "
        "data directory.",
    )


class SizeSpec(_Spec):
    """A resource request."""

    cpus: float = Field(gt=0, description="CPU cores.")
    memory: Bytes = Field(description="Memory, e.g. `4G`.")
    gpus: int | GpuCounts = Field(
        0,
        description="GPUs: a count when the pool has one GPU model, else `{model: count}`.",
    )


class OptionRange(_Spec):
    """Bounds of a choice a user may make at launch."""

    min: float = Field(0, ge=0, description="Smallest value a user may pick.")
    max: float = Field(ge=0, description="Largest value a user may pick.")


class ProfileOptions(_Spec):
    """What users may change about a profile's size. Absent means fixed."""

    cpus: OptionRange | None = Field(None, description="Range of CPU cores.")
    memory_gib: OptionRange | None = Field(None, description="Range of memory in GiB.")
    gpus: OptionRange | None = Field(None, description="Range of GPU count.")


class ProfileSpec(_Spec):
    """An offer users pick at launch."""

    display_name: str = Field("", description="Title on the launch form. Default: the key.")
    description: str = Field("", description="One line under the title.")
    pool: str = Field(description="Pool the profile runs on.")
    environment: str = Field("default", description="Software environment to start in.")
    size: SizeSpec = Field(description="Resources requested by default.")
    options: ProfileOptions = Field(ProfileOptions(), description="Bounded user choices.")
    whole_node: bool = Field(False, description="Take a whole node; `size` is then a minimum.")
    max_runtime: Duration = Field(
        "8h", validate_default=True, description="Longest a workload may run before it is stopped."
    )
    accounts: list[str] = Field(
        [], description="Accounts (and their subtrees) that may use it. Empty: everyone."
    )
    priority: int = Field(0, description="Added to the priority of its workloads.")


#: A budget period: a calendar one starting in ``accounting.time_zone``, or the last N days.
BudgetPeriod = Annotated[
    str,
    Field(
        pattern=r"^(day|week|month|quarter|year|[1-9][0-9]{0,3}d)$",
        json_schema_extra={"examples": ["month", "quarter", "30d"]},
    ),
]


class BudgetSpec(_Spec):
    """Money an account (and everything below it) may spend per period."""

    amount: Money = Field(description="Spending limit per period, in the currency.")
    period: BudgetPeriod = Field(
        "month",
        description="`day`, `week` (from Monday), `month`, `quarter` or `year`: calendar "
        "periods that start at midnight in `accounting.time_zone`. `Nd` (e.g. `30d`): the last "
        "N days, rolling.",
    )
    alerts: list[Annotated[float, Field(gt=0, le=1)]] = Field(
        [0.5, 0.8, 0.9],
        description="Fractions of the budget at which the account's managers are told (100% "
        "always is): in the meter and dashboard, by e-mail and webhook where configured.",
    )
    hard_stop: bool = Field(
        True,
        description="At 100% (plus `overdraft`): hold new workloads, and stop running ones "
        "after `grace` (or step them down to `step_down`). A workload is also held when its "
        "cost up to its maximum runtime, with what running ones may still spend, would go "
        "beyond what is left. False: alerts only.",
    )
    grace: Duration = Field(
        "15m",
        validate_default=True,
        description="How long running workloads are warned before a spent budget stops them.",
    )
    step_down: Name | None = Field(
        None,
        description="Profile (on the same pool) that running workloads step down to when the "
        "budget is spent, instead of being stopped: they keep running, charged at its rate, "
        "with its priority, and may be preempted. Empty: they are stopped.",
    )
    overdraft: Money = Field(
        0,
        description="How much beyond `amount` the account may spend before the hard stop "
        "(work admitted while money was left may finish). 0: none.",
    )


class LimitSpec(_Spec):
    """Concurrent use that may not be exceeded. Absent keys are unlimited."""

    cpus: float | None = Field(None, ge=0, description="CPU cores in use at once.")
    memory: Bytes | None = Field(None, description="Memory in use at once.")
    gpus: int | None = Field(None, ge=0, description="GPUs in use at once (all models).")
    workloads: int | None = Field(None, ge=0, description="Workloads running at once.")


class QuotaSpec(_Spec):
    """Resources guaranteed to an account on a pool, or the most it may borrow beyond them."""

    cpus: float = Field(0, ge=0, description="CPU cores.")
    memory: Bytes = Field(0, description="Memory.")
    gpus: GpuCounts = Field({}, description="GPUs by model.")


class AllocationSpec(_Spec):
    """An account's grant on a pool."""

    account: str = Field(description="Account name or path.")
    pool: str = Field(description="Pool name.")
    quota: QuotaSpec = Field(QuotaSpec(), description="Guaranteed resources (nominal quota).")
    borrowing_limit: QuotaSpec | None = Field(
        None, description="Most it may use of idle capacity beyond its quota. Empty: unlimited."
    )
    budget: BudgetSpec | None = Field(None, description="Spending limit. Empty: none.")


class LimitsSpec(_Spec):
    """Limits at every level. A user's own limit beats the accounts'; otherwise the lowest
    limit among the charged account and its ancestors applies; otherwise `default`."""

    default: LimitSpec = Field(LimitSpec(), description="Applies when nothing else does.")
    accounts: dict[str, LimitSpec] = Field({}, description="Per account (name or path).")
    users: dict[str, LimitSpec] = Field({}, description="Per user.")
    pending_per_user: int = Field(
        10_000,
        ge=1,
        description="Most workloads one user may have waiting (`pending`) at once; each task "
        "of a job array counts. A submission that would go beyond it is refused, saying so.",
    )


class SchedulingSpec(_Spec):
    """How the queue is ordered and admitted (see docs/design/0001-scheduler.md)."""

    policy: Literal["fairshare", "easy", "fifo"] = Field(
        "fairshare",
        description="`fairshare`: hierarchical fair share with EASY backfill. `easy`: "
        "submission order with EASY backfill. `fifo`: strict submission order.",
    )
    half_life: Duration = Field(
        "7d", validate_default=True, description="Half-life of past usage in fair share."
    )
    fairshare_weight: NonNegative = Field(10_000, description="Weight of the fair-share factor.")
    age_weight: NonNegative = Field(1_000, description="Weight of the age factor.")
    max_age: Duration = Field(
        "7d", validate_default=True, description="Age at which the age factor stops growing."
    )
    preemption_grace: Duration = Field(
        "5m", validate_default=True, description="Warning a preempted workload gets."
    )
    stop_grace: Duration = Field(
        "30s",
        validate_default=True,
        description="Time a stopped or cancelled workload has between SIGTERM and SIGKILL "
        "(Slurm's KillWait).",
    )
    interval: Duration = Field(
        "10s",
        validate_default=True,
        description="A scheduling cycle runs on every submission and completion, and at least "
        "this often.",
    )
    fair_share_interval: Duration = Field(
        "5m",
        validate_default=True,
        description="How often fair-share factors are recomputed from decayed usage (Slurm's "
        "PriorityCalcPeriod); cycles in between reuse them.",
    )
    estimate_interval: Duration = Field(
        "30s",
        validate_default=True,
        description="How often the expected start of every held workload is projected (Slurm's "
        "bf_interval); cycles in between keep the last projection.",
    )


class SessionsSpec(_Spec):
    """Interactive sessions (JupyterLab servers) started through the hub."""

    named_servers: int = Field(
        2, ge=0, description="Named servers each user may have besides their default one."
    )
    cull_idle: Duration = Field(
        "2h",
        validate_default=True,
        description="Stop a session after this long without use: no browser or kernel "
        "activity and no CPU use (5% of a core). `0`: never.",
    )
    cull_warning: Duration = Field(
        "15m",
        validate_default=True,
        description="Warn in the session's meter this long before an idle stop.",
    )


class ExistingAccountsSpec(_Spec):
    """Hub users who already have a POSIX account of the same name run as that account.

    For sites whose hub logs in with PAM or LDAP, where the authenticator vouches that hub user
    ``alice`` is the machine's ``alice``. Only accounts inside the uid range (and, when
    ``groups`` is given, members of one of them) qualify; system accounts (uid below 1000),
    ``nobody``, accounts whose shell is ``nologin`` or ``false`` (other services') and accounts
    Allotment made for another hub user never do. A hub user without a qualifying account gets
    one Allotment creates, as without this setting.
    """

    uid_min: int = Field(1000, ge=1000, description="Smallest uid that may be used.")
    uid_max: int = Field(59999, ge=1000, description="Largest uid that may be used.")
    groups: list[str] = Field(
        [], description="Only members of one of these POSIX groups. Empty: any account in range."
    )


class IdentitySpec(_Spec):
    """Which POSIX account a hub user's workloads run as (when Allotment runs as root)."""

    existing_accounts: ExistingAccountsSpec | None = Field(
        None,
        description="Run hub users as their existing POSIX accounts of the same name (PAM or "
        "LDAP sites). Empty (the default): every hub user runs as an account Allotment creates "
        "and marks as its own (`jupyter-<name>`), and no existing account is ever used.",
    )


class AccountingSpec(_Spec):
    """How use is charged and shown (docs/design/0004-ledger.md)."""

    interval: Duration = Field(
        "1m",
        validate_default=True,
        ge=1,
        description="A running workload's charges close this often: budgets, the meter and "
        "reports are never further behind than this.",
    )
    entry: Duration = Field(
        "1h",
        validate_default=True,
        ge=60,
        description="Longest span of one ledger entry: a running workload writes one entry per "
        "span of the clock (24 a day at `1h`) and one at its end. Shorter spans give finer "
        "history and a larger ledger.",
    )
    time_zone: TimeZone = Field(
        "UTC",
        description="The site's time zone (an IANA name, e.g. `Europe/Berlin`): where days, "
        "weeks, months, quarters and years of budgets and reports start, and how pages show "
        "dates when the viewer's browser does not say.",
    )
    leaderboard: Literal["members", "managers", "off"] = Field(
        "members",
        description="Who sees an account's leaderboard of members by cost: its members, only "
        "its managers (and administrators), or nobody.",
    )


class SmtpSpec(_Spec):
    """The mail server budget alerts are sent through."""

    host: str = Field(description="SMTP server host name.")
    port: int = Field(25, ge=1, le=65535, description="SMTP server port.")
    sender: str = Field(description="From address of alerts, e.g. `allotment@example.org`.")
    starttls: bool = Field(False, description="Upgrade the connection with STARTTLS.")
    username: str | None = Field(None, description="Login name, when the server needs one.")
    password_file: str | None = Field(
        None,
        pattern=r"^/",
        description="File holding the login password (never the password itself: the policy "
        "is stored and shown).",
    )


class WebhookSpec(_Spec):
    """An address that receives every budget alert as a signed JSON POST."""

    url: str = Field(pattern=r"^https?://", description="Where alerts are POSTed.")
    secret_file: str = Field(
        pattern=r"^/",
        description="File holding the shared secret: each POST carries `X-Allotment-Timestamp` "
        "and `X-Allotment-Signature: sha256=<HMAC-SHA256 of '<timestamp>.' + body>`, and an "
        "`Idempotency-Key` (docs/notifications.md).",
    )


class NotificationsSpec(_Spec):
    """Where budget alerts go besides the meter and the dashboard."""

    smtp: SmtpSpec | None = Field(None, description="Send alerts by e-mail. Empty: no e-mail.")
    email_domain: str | None = Field(
        None,
        description="Users without an `email` get `<user>@<email_domain>`.",
    )
    webhooks: list[WebhookSpec] = Field([], description="Signed HTTP POSTs of every alert.")


class DaskSpec(_Spec):
    """Dask clusters made from notebooks (`allotment.dask.AllotmentCluster`): where their
    schedulers run, how big they may grow, and when they are stopped."""

    profile: str | None = Field(
        None,
        description="Profile a cluster's workers start from when the client names none. "
        "None: the client must name one.",
    )
    scheduler_profile: str | None = Field(
        None,
        description="Profile a cluster's scheduler runs on (its pool must be one whose "
        "workers' pools can reach it). None: the first profile on a `local` pool, at "
        "`scheduler_cpus` and `scheduler_memory`.",
    )
    scheduler_cpus: float = Field(1.0, gt=0, description="CPUs of each cluster's scheduler.")
    scheduler_memory: Bytes = Field(
        "1G", validate_default=True, description="Memory of each cluster's scheduler."
    )
    max_workers: int = Field(
        64, ge=1, le=10_000, description="Most workers one cluster may ask for."
    )
    clusters_per_user: int = Field(
        5, ge=0, le=1000, description="Most clusters one user may have running at once."
    )
    idle_timeout: Duration = Field(
        "30m",
        validate_default=True,
        description="Stop a cluster this long without a client and without a task. `0`: never.",
    )
    service_url: str | None = Field(
        None,
        description="URL a cluster's scheduler reports to the service at (its API's root, "
        "e.g. `http://10.0.0.5:8750/services/allotment/`). Default: where `allot serve` "
        "listens, on loopback.",
    )
    owner_grace: Duration = Field(
        "60s",
        validate_default=True,
        # The cluster object heartbeats every 10 s: less than two beats would stop live ones.
        ge=20,
        description="Stop a cluster this long after the notebook (kernel or session) that "
        "owns it stopped heartbeating, unless it was made with `shutdown_on_close=False`. At "
        "least 20 s: the client heartbeats every 10 s.",
    )


class SlurmSpec(_Spec):
    """How Allotment drives a Slurm cluster (pools with `backend: slurm`; docs/slurm.md)."""

    conf: str | None = Field(
        None,
        pattern=r"^/",
        description="The cluster's `slurm.conf` (`SLURM_CONF` of every Slurm command). Empty: "
        "Slurm's default.",
    )
    bin_dir: str | None = Field(
        None,
        pattern=r"^/",
        description="Directory of `sbatch`, `squeue`, `sacctmgr`… Empty: `/usr/bin`, else `PATH`.",
    )
    cluster: str | None = Field(
        None,
        pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$",
        description="The cluster's `ClusterName`. Empty: read once from `scontrol show config`.",
    )
    poll_interval: Duration = Field(
        "1s",
        validate_default=True,
        ge=1,
        description="How often the state of every job is read, in one `squeue` call for all of "
        "them: the longest a start or an end goes unseen.",
    )
    command_timeout: Duration = Field(
        "30s",
        validate_default=True,
        ge=1,
        description="A Slurm command still running after this is killed, and Slurm counts as "
        "unavailable until one answers.",
    )
    mirror: bool = Field(
        True,
        description="Mirror the accounts tree, shares, members and limits into Slurm's "
        "accounting (`sacctmgr`), so that `sbatch` outside Allotment follows the same policy.",
    )
    mirror_budgets: bool = Field(
        False,
        description="Also mirror hard-stop budgets of Slurm pools as `GrpTRESMins` limits "
        "(approximate: Slurm counts decayed CPU-minutes, not money).",
    )
    import_usage: bool = Field(
        True,
        description="Charge jobs that mirrored users submit to Slurm directly, so that budgets "
        "and reports cover all of an account's spending.",
    )


class Policy(_Spec):
    """The whole policy of one Allotment installation."""

    service: ServiceSettings = Field(ServiceSettings(), description="How the service runs.")
    currency: str = Field("credits", description="Unit of every price and budget.")
    accounts: dict[Name, AccountSpec] = Field({}, description="The accounts tree, by account name.")
    users: dict[str, UserSpec] = Field({}, description="Per-user settings.")
    pools: dict[Name, PoolSpec] = Field({}, description="Pools of capacity, by name.")
    profiles: dict[Name, ProfileSpec] = Field({}, description="Launch offers, by name.")
    allocations: list[AllocationSpec] = Field([], description="Grants of accounts on pools.")
    limits: LimitsSpec = Field(LimitsSpec(), description="Concurrency limits.")
    scheduling: SchedulingSpec = Field(SchedulingSpec(), description="Queue order and admission.")
    sessions: SessionsSpec = Field(SessionsSpec(), description="Hub sessions (`allot up`).")
    identity: IdentitySpec = Field(
        IdentitySpec(), description="Which POSIX account each hub user runs as."
    )
    accounting: AccountingSpec = Field(
        AccountingSpec(), description="Charging, the ledger and report periods."
    )
    notifications: NotificationsSpec = Field(
        NotificationsSpec(), description="Budget alerts by e-mail and webhook."
    )
    slurm: SlurmSpec = Field(SlurmSpec(), description="Slurm pools' cluster (`backend: slurm`).")
    dask: DaskSpec = Field(DaskSpec(), description="Dask clusters made from notebooks.")
