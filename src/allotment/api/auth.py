"""Who is calling: JupyterHub tokens, and the headless admin token.

JupyterHub is the identity provider. A request carries a hub API token (``Authorization:
token …`` or ``Bearer …``); the hub tells us whose it is and which scopes it holds, and the
answer is cached for ``token_cache_seconds``. Admin tokens (``allot_admin_…``) exist for first
setup before any hub runs; only their SHA-256 is stored.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from typing import Any

from jupyterhub.services.auth import HubAuth
from tornado.web import HTTPError

from allotment.domain.permissions import Scope
from allotment.errors import PublicError, Unauthenticated

__all__ = [
    "ADMIN_IDENTITY",
    "ADMIN_PREFIX",
    "HubUnavailable",
    "Identity",
    "TokenVerifier",
    "new_admin_token",
    "token_sha256",
]

log = logging.getLogger(__name__)

ADMIN_PREFIX = "allot_admin_"
#: What the headless admin's identities are called: ``admin-token/<token name>``. JupyterHub
#: refuses "/" in user names, so no hub user can be given this identity (and with it, the
#: admin's workloads).
ADMIN_IDENTITY = "admin-token/"


class HubUnavailable(PublicError):
    status = 503
    title = "JupyterHub unavailable"


@dataclass(frozen=True, slots=True)
class Identity:
    name: str
    scopes: frozenset[str]
    #: "user"; "service" for a JupyterHub service's token; "spawner" for a user the hub's
    #: spawner acts for (only it may start sessions).
    kind: str = "user"


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def new_admin_token() -> str:
    return ADMIN_PREFIX + secrets.token_urlsafe(32)


class TokenVerifier:
    """Turns a bearer token into an ``Identity``, asking JupyterHub when it must."""

    def __init__(self, hub_api_url: str, cache_seconds: int) -> None:
        # HubAuth reads a max age of 0 as "forever"; we read it as "never cache".
        self.use_cache = cache_seconds > 0
        self.hub = HubAuth(api_url=hub_api_url.rstrip("/"), cache_max_age=cache_seconds)

    async def hub_user(self, token: str) -> Identity:
        try:
            model: dict[str, Any] | None = await self.hub.user_for_token(
                token, use_cache=self.use_cache, sync=False
            )
        except HTTPError as e:
            log.warning("cannot verify a token with JupyterHub: %s", e.log_message)
            raise HubUnavailable(
                "Allotment cannot reach JupyterHub to check your token; try again shortly."
            ) from None
        kind = model.get("kind", "user") if model else None
        if not model or kind not in ("user", "service") or "name" not in model:
            raise Unauthenticated(
                "This token is not valid (expired, revoked, or not a JupyterHub user token). "
                "Get a new one from the hub's token page."
            )
        return Identity(model["name"], frozenset(model.get("scopes", [])), kind)


ADMIN_IDENTITY_SCOPES = frozenset(s.value for s in Scope if s is not Scope.SPAWN)
