"""SQLAlchemy 2 mapped classes. Rows only: rules live in ``domain``.

History is never deleted: accounts, pools and profiles that anything refers to are archived
(``archived_at`` set) instead of dropped, and every applied policy is kept as a version.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

__all__ = [
    "Account",
    "AdminToken",
    "Base",
    "Heartbeat",
    "Membership",
    "PolicyVersion",
    "Pool",
    "Profile",
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
