"""The `allot` command: a thin client of the HTTP API (and the `serve` entry point)."""
