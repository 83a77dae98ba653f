"""Code that runs inside JupyterHub: the spawner and the launch form (arrive with issue 5)."""
