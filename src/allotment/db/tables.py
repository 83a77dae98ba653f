"""SQLAlchemy 2 mapped classes. Rows only: rules live in ``domain``.

History is never deleted: accounts, pools and profiles that anything refers to are archived
(``archived_at`` set) instead of dropped, and every applied policy is kept as a version.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

__all__ = [
    "Account",
    "AdminToken",
    "AuditEntry",
    "Base",
    "BudgetAlert",
    "BudgetRow",
    "DaskCluster",
    "Heartbeat",
    "LedgerEntry",
    "Membership",
    "Notification",
    "OpenCharge",
    "PolicyVersion",
    "Pool",
    "Profile",
    "UsageDay",
    "User",
    "WORKLOADS",
    "Workload",
]


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every database; SQLite stores no zone, so it is put back on load."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use an aware UTC time")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


# SQLite only auto-increments a column declared INTEGER PRIMARY KEY.
Id = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    type_annotation_map = {
        datetime: UtcDateTime(),
        dict[str, Any]: JSON,
        list[Any]: JSON,
    }


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    #: Slash path from the root; unique, and the identifier the API shows.
    path: Mapped[str] = mapped_column(String(1024), unique=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"))
    shares: Mapped[int] = mapped_column(Integer, default=1)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime]
    #: Set when the policy no longer names the account but history refers to it.
    archived_at: Mapped[datetime | None]
    #: ``policy`` when the policy file states it, ``api`` when a manager created it (an apply
    #: leaves it alone unless the file itself comes to name it).
    origin: Mapped[str] = mapped_column(String(16), default="policy", server_default="policy")


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    default_account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"))
    created_at: Mapped[datetime]


class Membership(Base):
    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("user_id", "account_id"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    #: ``policy`` when the policy file states it (apply may remove it), ``api`` when a manager
    #: added it (apply leaves it alone).
    origin: Mapped[str] = mapped_column(String(16), default="policy")


class Pool(Base):
    __tablename__ = "pools"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    backend: Mapped[str] = mapped_column(String(32))
    #: The pool's section of the policy (nodes, rates), as JSON.
    spec: Mapped[dict[str, Any]]
    archived_at: Mapped[datetime | None]


class Profile(Base):
    __tablename__ = "profiles"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    pool_id: Mapped[int] = mapped_column(ForeignKey("pools.id"))
    #: The profile's section of the policy, as JSON.
    spec: Mapped[dict[str, Any]]
    archived_at: Mapped[datetime | None]


class PolicyVersion(Base):
    """Every policy ever applied, newest last; the newest is in force."""

    __tablename__ = "policy_versions"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    applied_at: Mapped[datetime]
    applied_by: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64))
    document: Mapped[dict[str, Any]]
    #: What this version changed, as shown to the administrator.
    changes: Mapped[list[Any]]


class Workload(Base):
    __tablename__ = "workloads"
    __table_args__ = (
        UniqueConstraint("user_id", "idempotency_key"),
        Index("ix_workloads_account_id_id", "account_id", "id"),
        Index("ix_workloads_user_id_id", "user_id", "id"),
        Index("ix_workloads_status_id", "status", "id"),
        Index("ix_workloads_created_at", "created_at"),
        # The meter finds the workloads that started since its last pass by this.
        Index("ix_workloads_started_at", "started_at"),
        Index("ix_workloads_ended_at", "ended_at"),
        # Ids name run directories, groups and output files: never reused, even after a
        # restore (migration 0006; PostgreSQL's sequence never goes back anyway).
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(255), default="")
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    pool_id: Mapped[int | None] = mapped_column(ForeignKey("pools.id"))
    profile_id: Mapped[int | None] = mapped_column(ForeignKey("profiles.id"))
    millicpus: Mapped[int] = mapped_column(Integer)
    memory: Mapped[int] = mapped_column(BigInteger)
    #: GPU model → count; empty for none.
    gpus: Mapped[dict[str, Any]]
    #: Desired state (``WorkloadState``), written by users, the scheduler and the culler.
    target: Mapped[int] = mapped_column(SmallInteger)
    #: Observed state (``WorkloadState``), written by the reconciler.
    status: Mapped[int] = mapped_column(SmallInteger)
    #: Why the workload is where it is, for the researcher.
    reason: Mapped[str] = mapped_column(Text, default="")
    command: Mapped[list[Any] | None] = mapped_column(JSON)
    #: Longest run in seconds; None means the profile's or the pool's.
    max_runtime: Mapped[int | None] = mapped_column(Integer)
    #: Nodes it spans (a multi-node job on a pool whose backend places work itself); the
    #: resources above are the total over all of them.
    nodes: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    #: Client-chosen key that makes a retried create return the first result.
    idempotency_key: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    #: Environment variables the submitter asked for (never the service's own).
    env: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    #: Where a batch job runs and writes its output; None: the user's home directory.
    workdir: Mapped[str | None] = mapped_column(Text, default=None)
    #: Files for standard output and error; None: ``allot-<id>.out`` / ``.err`` in ``workdir``.
    stdout: Mapped[str | None] = mapped_column(Text, default=None)
    stderr: Mapped[str | None] = mapped_column(Text, default=None)
    #: The first element of the job array this workload belongs to (itself for the first).
    array_id: Mapped[int | None] = mapped_column(BigInteger, default=None, index=True)
    array_index: Mapped[int | None] = mapped_column(Integer, default=None)
    #: Start only after this workload has ended successfully (Slurm's afterok).
    after_id: Mapped[int | None] = mapped_column(BigInteger, default=None)
    #: The Dask cluster a ``dask-scheduler`` or ``dask-worker`` belongs to.
    cluster_id: Mapped[int | None] = mapped_column(BigInteger, default=None, index=True)
    #: Node the scheduler placed it on.
    node: Mapped[str | None] = mapped_column(String(255), default=None)
    #: The backend's checkpoints (process id and start time, cgroup, GPUs…): what the
    #: reconciler needs to find the workload again after any crash.
    placement: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    #: Place among the held workloads of its pool and projected start, while pending.
    position: Mapped[int | None] = mapped_column(Integer, default=None)
    expected_start: Mapped[datetime | None] = mapped_column(default=None)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    ended_at: Mapped[datetime | None] = mapped_column(default=None)
    #: Last use of a session: browser or kernel activity it reported, or CPU use seen by the
    #: controller. The culler stops sessions idle for `sessions.cull_idle`.
    last_activity: Mapped[datetime | None] = mapped_column(default=None)
    exit_code: Mapped[int | None] = mapped_column(Integer, default=None)


#: The workloads table itself, for Core statements on the hot paths (an ORM-enabled statement
#: costs more to prepare than to run there).
WORKLOADS = cast(Table, Workload.__table__)


class AdminToken(Base):
    """Headless tokens for first setup and automation; only their SHA-256 is stored."""

    __tablename__ = "admin_tokens"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class Heartbeat(Base):
    """When a part of the service last showed it works, for ``…/api/health/ready``: the
    controller's last completed scheduling cycle (readable by API processes that do not run
    it), and the readiness check's own write."""

    __tablename__ = "heartbeats"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    at: Mapped[datetime]
    #: Seconds after ``at`` past which the part is taken to be stuck or gone.
    stale_after: Mapped[float]


class LedgerEntry(Base):
    """One charge (or refund, or correction), written exactly once and never changed.

    ``key`` makes it exactly once whatever crashes: backend-neutral, e.g. ``w:<workload
    id>:<interval start>`` for a workload of Allotment's, ``slurm:<cluster>:<job id>:<submit
    time>:<interval start>`` for a Slurm job it did not submit (Slurm's job ids repeat).
    Amounts are integers in millionths of the policy's currency, so sums are exact.
    """

    __tablename__ = "ledger_entries"
    __table_args__ = (
        Index("ix_ledger_entries_account_id_start", "account_id", "start"),
        Index("ix_ledger_entries_user_id_start", "user_id", "start"),
        Index("ix_ledger_entries_start", "start"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    key: Mapped[str] = mapped_column(String(255), unique=True)
    #: ``charge``, ``refund`` (work that failed for a reason of ours) or ``correction``.
    kind: Mapped[str] = mapped_column(String(16))
    #: Where the charged work ran: ``local``, ``slurm``… (a pool's backend).
    source: Mapped[str] = mapped_column(String(32))
    #: The workload charged; None for work Allotment did not submit.
    workload_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    #: The backend's own name of the work (Slurm: ``<cluster>:<job id>:<submit time>``).
    external_id: Mapped[str | None] = mapped_column(String(255))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    pool_id: Mapped[int | None] = mapped_column(ForeignKey("pools.id"))
    profile_id: Mapped[int | None] = mapped_column(ForeignKey("profiles.id"))
    #: The wall-clock interval charged, [start, end).
    start: Mapped[datetime]
    end: Mapped[datetime]
    #: What was requested, and so charged.
    millicpus: Mapped[int] = mapped_column(Integer)
    memory: Mapped[int] = mapped_column(BigInteger)
    gpus: Mapped[dict[str, Any]]
    #: Price of the requested resources per hour, and the charge, in millionths.
    rate: Mapped[int] = mapped_column(BigInteger)
    amount: Mapped[int] = mapped_column(BigInteger)
    #: Measured use in the interval, where the backend could measure it.
    used_cpu_seconds: Mapped[float | None] = mapped_column(Float)
    peak_memory: Mapped[int | None] = mapped_column(BigInteger)
    #: Mean GPU utilisation in [0, 1], where a GPU exists.
    gpu_utilisation: Mapped[float | None] = mapped_column(Float)
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime]


class OpenCharge(Base):
    """A running workload's charge since its last ledger entry: the meter's working state.

    Every ``accounting.interval`` the meter moves ``charged_through`` on and adds what that
    cost to ``amount`` and to the day's totals, in one transaction; when the entry's span ends
    (or the workload does) it writes the ledger entry and starts the next span.
    """

    __tablename__ = "open_charges"
    __table_args__ = (
        # Passes read only open rows; closed ones stay so nothing is charged twice.
        Index(
            "ix_open_charges_open",
            "workload_id",
            sqlite_where=text("NOT closed"),
            postgresql_where=text("NOT closed"),
        ),
        # Every pass rewrites every open row: room on its page lets PostgreSQL update it in
        # place (HOT, no index touched): a pass over 10,000 took 250 ms at the default, 50 ms.
        {"postgresql_with": {"fillfactor": "50"}},
    )

    workload_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    pool_id: Mapped[int | None] = mapped_column(ForeignKey("pools.id"))
    profile_id: Mapped[int | None] = mapped_column(ForeignKey("profiles.id"))
    source: Mapped[str] = mapped_column(String(32))
    millicpus: Mapped[int] = mapped_column(Integer)
    memory: Mapped[int] = mapped_column(BigInteger)
    gpus: Mapped[dict[str, Any]]
    #: GPUs requested, all models together (the day's GPU-seconds, without reading ``gpus``).
    gpu_count: Mapped[int] = mapped_column(Integer, default=0)
    #: Price per hour (millionths) and the dominant share of its pool it holds (fair share).
    rate: Mapped[int] = mapped_column(BigInteger)
    share: Mapped[float] = mapped_column(Float)
    #: Start of the current span, and how far it has been charged.
    span_start: Mapped[datetime]
    charged_through: Mapped[datetime]
    #: The same two instants in milliseconds since the epoch, and where its workload ended
    #: (None while it runs): the pass's arithmetic is on integers, the same in both
    #: databases, without parsing a timestamp per row.
    start_ms: Mapped[int] = mapped_column(BigInteger)
    through_ms: Mapped[int] = mapped_column(BigInteger)
    end_ms: Mapped[int | None] = mapped_column(BigInteger)
    ends_at: Mapped[datetime | None]
    #: Charged since ``span_start`` (millionths).
    amount: Mapped[int] = mapped_column(BigInteger, default=0)
    used_cpu_seconds: Mapped[float | None] = mapped_column(Float)
    peak_memory: Mapped[int | None] = mapped_column(BigInteger)
    gpu_utilisation: Mapped[float | None] = mapped_column(Float)
    #: Set once the workload's last entry is written; the row is kept so it is never charged
    #: again.
    closed: Mapped[bool] = mapped_column(Boolean, default=False)


class UsageDay(Base):
    """Running totals: one row per day (in the site's time zone), account, user, pool and
    profile. Budgets, the meter, the quote, fair share and reports read these, never scan
    workloads. ``pool_id`` and ``profile_id`` are 0 where there is none."""

    __tablename__ = "usage_days"
    __table_args__ = (Index("ix_usage_days_account_id_day", "account_id", "day"),)

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    account_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    pool_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    profile_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    #: Charged (millionths of the currency).
    amount: Mapped[int] = mapped_column(BigInteger, default=0)
    #: Requested resource-seconds: CPU core-seconds, GiB-seconds of memory, GPU-seconds.
    cpu_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    memory_gib_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    gpu_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    #: Dominant share of the pool × seconds: fair share's usage.
    share_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    #: Measured CPU seconds (efficiency: used ÷ requested).
    used_cpu_seconds: Mapped[float] = mapped_column(Float, default=0.0)


class BudgetRow(Base):
    """A budget in force: from the policy file (``origin`` policy) or set by a manager
    (``api``; it survives an apply until the file itself changes that budget's amount)."""

    __tablename__ = "budgets"
    __table_args__ = (UniqueConstraint("account_id", "pool_id"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    #: A budget goes with its account or pool (an apply removes one nothing else refers to).
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    #: None: across all pools (the account's own budget).
    pool_id: Mapped[int | None] = mapped_column(ForeignKey("pools.id", ondelete="CASCADE"))
    #: The policy's ``BudgetSpec`` as JSON (amount, period, alerts, hard_stop, grace, …).
    spec: Mapped[dict[str, Any]]
    origin: Mapped[str] = mapped_column(String(16), default="policy")
    #: The amount the policy file stated at the last apply (None: the file states none).
    file_amount: Mapped[float | None] = mapped_column(Float)
    updated_at: Mapped[datetime]
    updated_by: Mapped[str] = mapped_column(String(255))


class BudgetAlert(Base):
    """A threshold a budget crossed in one period: raised once, whatever restarts."""

    __tablename__ = "budget_alerts"
    __table_args__ = (UniqueConstraint("budget_id", "period_start", "threshold"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    budget_id: Mapped[int] = mapped_column(ForeignKey("budgets.id", ondelete="CASCADE"))
    period_start: Mapped[datetime]
    #: Fraction of the budget crossed (1.0: spent).
    threshold: Mapped[float] = mapped_column(Float)
    spent: Mapped[int] = mapped_column(BigInteger)
    raised_at: Mapped[datetime]
    message: Mapped[str] = mapped_column(Text)


class Notification(Base):
    """The outbox: an e-mail or webhook call to deliver, retried until it is, sent once."""

    __tablename__ = "notifications"
    __table_args__ = (Index("ix_notifications_sent_at_next_attempt", "sent_at", "next_attempt"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    #: Unique per alert and recipient: also the webhook's ``Idempotency-Key``.
    key: Mapped[str] = mapped_column(String(255), unique=True)
    #: ``email`` or ``webhook``.
    channel: Mapped[str] = mapped_column(String(16))
    #: An e-mail address or a webhook URL.
    target: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt: Mapped[datetime]
    sent_at: Mapped[datetime | None]
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime]


class AuditEntry(Base):
    """Who changed what, when: every change to accounts, memberships, shares and budgets,
    through the API or ``allot config apply``. Never changed or deleted."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_account_path_id", "account_path", "id"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    at: Mapped[datetime]
    #: The user (or ``admin:<token name>``, ``policy`` for an apply without a person).
    actor: Mapped[str] = mapped_column(String(255))
    #: e.g. ``account.create``, ``member.add``, ``budget.set``, ``policy.apply``.
    action: Mapped[str] = mapped_column(String(64))
    #: The account the change touches (its path), for who may read it; "" for site-wide.
    account_path: Mapped[str] = mapped_column(String(1024), default="")
    #: What was changed, e.g. ``lab-a/p1 shares`` or ``alice in lab-a``.
    target: Mapped[str] = mapped_column(Text)
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)


class DaskCluster(Base):
    """A Dask cluster: its scheduler and workers are workloads (``Workload.cluster_id``).

    Holds the cluster's TLS credentials (a self-signed certificate and key made for it alone:
    only its owner's clients, its scheduler and its workers hold them) and the SHA-256 of the
    token its scheduler reports with. Never deleted: an ended cluster keeps its row.
    """

    __tablename__ = "dask_clusters"
    __table_args__ = (
        Index("ix_dask_clusters_user_id_name", "user_id", "name"),
        Index("ix_dask_clusters_state", "state"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    #: Unique among one user's clusters that have not ended (the API checks).
    name: Mapped[str] = mapped_column(String(63))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    #: The profile its workers start from (its pool is where they run).
    profile_id: Mapped[int] = mapped_column(ForeignKey("profiles.id"))
    #: ``ClusterState``.
    state: Mapped[int] = mapped_column(SmallInteger)
    #: Why it is in its state, for the researcher ("stopped: idle for 30 min").
    reason: Mapped[str] = mapped_column(Text, default="")
    #: Each worker's size within the profile's options: ``{"cpus", "memory", "gpus",
    #: "threads"}``.
    worker: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: The interpreter its scheduler and workers run (the notebook's own, by default).
    python: Mapped[str] = mapped_column(Text)
    #: Versions of Python, dask and distributed the client reported at creation.
    versions: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: Workers asked for by `scale` (or, while adaptive, last asked by the scheduler, clamped).
    workers: Mapped[int] = mapped_column(Integer, default=0)
    #: Adaptive bounds; None: not adaptive.
    adapt_minimum: Mapped[int | None] = mapped_column(Integer, default=None)
    adapt_maximum: Mapped[int | None] = mapped_column(Integer, default=None)
    #: The scheduler's workload (None until the controller has made it).
    scheduler_id: Mapped[int | None] = mapped_column(BigInteger, default=None)
    #: The session that owns it (stopped after a grace when that session ends); None: made
    #: outside a session.
    session_id: Mapped[int | None] = mapped_column(BigInteger, default=None)
    #: False: it outlives the client that made it (``shutdown_on_close=False``).
    shutdown_on_close: Mapped[bool] = mapped_column(Boolean, default=True)
    #: Made by an administrator, who may charge any account: kept whatever the owner's
    #: memberships (anyone else's cluster stops once its owner may no longer charge it).
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    #: The scheduler's comm address (``tls://host:port``) and dashboard (``https://host:port``)
    #: once it has reported them.
    address: Mapped[str | None] = mapped_column(Text, default=None)
    dashboard: Mapped[str | None] = mapped_column(Text, default=None)
    #: PEM of its certificate (also its own CA) and key. Secret: never logged, only returned
    #: to its owner.
    tls_cert: Mapped[str] = mapped_column(Text)
    tls_key: Mapped[str] = mapped_column(Text)
    #: SHA-256 of the token its scheduler authenticates its reports with.
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    #: Last heartbeat of the client object that owns it, and of its scheduler.
    client_seen_at: Mapped[datetime | None] = mapped_column(default=None)
    scheduler_seen_at: Mapped[datetime | None] = mapped_column(default=None)
    #: Since when it has had no client and no task, as its scheduler reports; None: busy.
    idle_since: Mapped[datetime | None] = mapped_column(default=None)
    #: Worker workloads its scheduler would close first (no task, little data), best first, as
    #: it last reported: a scale-down stops these before busy ones.
    idle_workers: Mapped[list[int]] = mapped_column(JSON, default=list, server_default="[]")
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    ended_at: Mapped[datetime | None] = mapped_column(default=None)
