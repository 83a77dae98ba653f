"""the headless admin's identities move to ``admin-token/<name>``, a name no hub user can have

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_users = sa.table("users", sa.column("name", sa.String))
_tokens = sa.table("admin_tokens", sa.column("name", sa.String))


def _rename(old: str, new: str) -> None:
    """Users named ``old`` + an admin token's name become ``new`` + that name (the workloads
    and memberships follow: they refer to the user's id)."""
    bind = op.get_bind()
    for (name,) in bind.execute(sa.select(_tokens.c.name)):
        bind.execute(_users.update().where(_users.c.name == old + name).values(name=new + name))


def upgrade() -> None:
    _rename("admin-token:", "admin-token/")


def downgrade() -> None:
    _rename("admin-token/", "admin-token:")
