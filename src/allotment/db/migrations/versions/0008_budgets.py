"""budgets kept in the database, their alerts and the notifications outbox

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

T = sa.DateTime(timezone=True)
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "budgets",
        sa.Column("id", Id, primary_key=True),
        sa.Column(
            "account_id", Id, sa.ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("pool_id", Id, sa.ForeignKey("pools.id", ondelete="CASCADE"), nullable=True),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("file_amount", sa.Float(), nullable=True),
        sa.Column("updated_at", T, nullable=False),
        sa.Column("updated_by", sa.String(255), nullable=False),
        sa.UniqueConstraint("account_id", "pool_id"),
    )
    op.create_table(
        "budget_alerts",
        sa.Column("id", Id, primary_key=True),
        sa.Column("budget_id", Id, sa.ForeignKey("budgets.id", ondelete="CASCADE"), nullable=False),
        sa.Column("period_start", T, nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("spent", sa.BigInteger(), nullable=False),
        sa.Column("raised_at", T, nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.UniqueConstraint("budget_id", "period_start", "threshold"),
    )
    op.create_table(
        "notifications",
        sa.Column("id", Id, primary_key=True),
        sa.Column("key", sa.String(255), nullable=False, unique=True),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt", T, nullable=False),
        sa.Column("sent_at", T, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("created_at", T, nullable=False),
    )
    op.create_index(
        "ix_notifications_sent_at_next_attempt", "notifications", ["sent_at", "next_attempt"]
    )


def downgrade() -> None:
    op.drop_table("notifications")
    op.drop_table("budget_alerts")
    op.drop_table("budgets")
