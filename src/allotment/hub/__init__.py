"""Code that runs inside JupyterHub and the session: the spawner, its launch form, and the
session's server extension (the meter, activity reports). What ``allot up`` runs before the hub
starts (its data directory, generated configuration, session environment) lives in ``cli/``."""
