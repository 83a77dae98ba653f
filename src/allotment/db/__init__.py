"""Persistence: SQLAlchemy tables, the engine, queries and migrations. No behaviour of its own."""
