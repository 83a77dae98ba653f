"""Trace replay through the real scheduler with a fake clock (arrives with the scheduler issue)."""
