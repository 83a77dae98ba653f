"""Placeholder: the worker program (being written)."""
