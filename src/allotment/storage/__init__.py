"""Volume providers (arrive with the storage issue)."""
