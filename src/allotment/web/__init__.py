"""Dashboard pages (arrive with the dashboard issue)."""
