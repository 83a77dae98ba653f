"""Where workloads run: local host, Slurm (arrive with the execution issues)."""
