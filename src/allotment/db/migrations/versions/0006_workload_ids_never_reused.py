"""workload ids are never reused on SQLite (AUTOINCREMENT), as PostgreSQL's sequence never does

A workload's id names things outside the database: its run directory, its control groups, its
output files (``allot-<id>.out``). SQLite without AUTOINCREMENT hands out one more than the
largest id left in the table, so a database restored from a backup would give a new workload
the id of one submitted after the backup was taken. With AUTOINCREMENT, ``sqlite_sequence``
holds the largest id ever given, and a restore raises it past every id anything still knows
(``allotment.db.backup``). PostgreSQL's sequence already never goes back: nothing to do there.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    # SQLite cannot add AUTOINCREMENT to a table: it is made again, its rows copied.
    with op.batch_alter_table(
        "workloads", recreate="always", table_kwargs={"sqlite_autoincrement": True}
    ):
        pass


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table(
        "workloads", recreate="always", table_kwargs={"sqlite_autoincrement": False}
    ):
        pass
