"""Placeholder: the scheduler program (being written)."""
