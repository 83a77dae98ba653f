"""The HTTP API (FastAPI): thin handlers; authorisation lives in ``domain.permissions``."""
