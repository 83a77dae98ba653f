"""The `allot` command: a thin client of the HTTP API (and the `serve` entry point), and what
`allot up` sets up on this machine before JupyterHub starts (``hub_setup``, ``environments``)."""
