"""Allotment: a fair, visible, self-service hub for shared research computers."""

__all__ = ["__version__"]

__version__ = "0.1.0"
