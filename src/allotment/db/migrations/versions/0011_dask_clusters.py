"""Dask clusters: a row each, and the workloads that belong to one

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
T = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "dask_clusters",
        sa.Column("id", Id, primary_key=True),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("user_id", Id, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("account_id", Id, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("profile_id", Id, sa.ForeignKey("profiles.id"), nullable=False),
        sa.Column("state", sa.SmallInteger(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("worker", sa.JSON(), nullable=False),
        sa.Column("python", sa.Text(), nullable=False),
        sa.Column("versions", sa.JSON(), nullable=False),
        sa.Column("workers", sa.Integer(), nullable=False),
        sa.Column("adapt_minimum", sa.Integer(), nullable=True),
        sa.Column("adapt_maximum", sa.Integer(), nullable=True),
        sa.Column("scheduler_id", sa.BigInteger(), nullable=True),
        sa.Column("session_id", sa.BigInteger(), nullable=True),
        sa.Column("shutdown_on_close", sa.Boolean(), nullable=False),
        sa.Column("admin", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("address", sa.Text(), nullable=True),
        sa.Column("dashboard", sa.Text(), nullable=True),
        sa.Column("tls_cert", sa.Text(), nullable=False),
        sa.Column("tls_key", sa.Text(), nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("client_seen_at", T, nullable=True),
        sa.Column("scheduler_seen_at", T, nullable=True),
        sa.Column("idle_since", T, nullable=True),
        sa.Column("idle_workers", sa.JSON(), nullable=False, server_default="[]"),
        sa.Column("created_at", T, nullable=False),
        sa.Column("updated_at", T, nullable=False),
        sa.Column("ended_at", T, nullable=True),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_dask_clusters_user_id_name", "dask_clusters", ["user_id", "name"])
    op.create_index("ix_dask_clusters_state", "dask_clusters", ["state"])
    with op.batch_alter_table("workloads") as batch:
        batch.add_column(sa.Column("cluster_id", sa.BigInteger(), nullable=True))
        batch.create_index("ix_workloads_cluster_id", ["cluster_id"])


def downgrade() -> None:
    with op.batch_alter_table("workloads") as batch:
        batch.drop_index("ix_workloads_cluster_id")
        batch.drop_column("cluster_id")
    op.drop_index("ix_dask_clusters_state", "dask_clusters")
    op.drop_index("ix_dask_clusters_user_id_name", "dask_clusters")
    op.drop_table("dask_clusters")
