"""The loops that make reality match the database: scheduling, the reconciler, the culler."""
