"""Where workloads run: the backend contract (``base``), the local host (``local``), and a fake for
tests; Slurm is not written yet."""
