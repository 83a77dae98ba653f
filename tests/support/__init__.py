"""Helpers for the test suite: real services started for it, and small builders."""
