"""Trace replay through the real scheduler with a fake clock, and its metrics."""
