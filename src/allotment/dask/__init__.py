"""Per-user Dask clusters: none yet. The package holds their place in the layout (DESIGN §7)."""
