"""The loops that make reality match the database (arrive with the execution issue)."""
