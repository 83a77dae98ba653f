"""Alembic environment: run with a connection handed over by ``allotment.db.engine``."""

from __future__ import annotations

from alembic import context

from allotment.db.tables import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only `alembic` run by hand gets here
    raise SystemExit("run migrations with `allot db upgrade`, which supplies the connection")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
