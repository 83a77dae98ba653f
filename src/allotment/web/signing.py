"""Signed values for the dashboard's cookies and forms.

The login cookie carries the user's hub token, so it must be tamper-proof: every cookie and
XSRF token is an HMAC-SHA256 over its content with a key kept in the service's data directory
(``dashboard-secret``, 0600), shared by every worker process of one service and kept across
restarts so that a restart logs nobody out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Any

__all__ = ["Signer", "load_key"]

SECRET_FILE = "dashboard-secret"


def load_key(data_dir: Path | None) -> bytes:
    """The signing key in ``data_dir``, created on first use; a fresh one where there is no
    data directory (tests)."""
    if data_dir is None:
        return secrets.token_bytes(32)
    path = data_dir / SECRET_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = secrets.token_bytes(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:  # another worker wrote it first: use theirs
        return bytes.fromhex(path.read_text().strip())
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")
    return key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    """Signs small JSON values with one purpose each (a value signed for the login cookie is
    no state cookie, and no XSRF token)."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, purpose: str, body: str) -> str:
        return _b64(hmac.new(self._key, f"{purpose}\0{body}".encode(), hashlib.sha256).digest())

    def sign(self, purpose: str, value: dict[str, Any]) -> str:
        body = _b64(json.dumps(value, separators=(",", ":")).encode())
        return f"{body}.{self._mac(purpose, body)}"

    def unsign(self, purpose: str, signed: str | None) -> dict[str, Any] | None:
        """The value, or None when it is missing, altered or signed for another purpose."""
        if not signed or "." not in signed:
            return None
        body, _, mac = signed.rpartition(".")
        if not hmac.compare_digest(mac, self._mac(purpose, body)):
            return None
        try:
            value = json.loads(_unb64(body))
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def xsrf_token(self, token: str) -> str:
        """The forms' XSRF token for a login: bound to its hub token, so a page of another
        site cannot know it, and a token from another login does not fit."""
        return self._mac("xsrf", hashlib.sha256(token.encode()).hexdigest())

    def xsrf_ok(self, token: str, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(self.xsrf_token(token), given or "")
