"""Per-user Dask clusters (arrive with the Dask issue)."""
