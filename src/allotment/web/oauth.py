"""Login to the dashboard through JupyterHub's OAuth for services: no second password.

The hub registers the service as an OAuth client when it runs it (``allot up``'s generated
``jupyterhub_config.py``: ``oauth_no_confirm``, ``oauth_client_allowed_scopes`` with
Allotment's scopes) and passes the client's id, secret (the service's API token) and redirect
URI in the environment. The code flow:

1. a page without a valid login cookie redirects to the hub's ``/hub/api/oauth2/authorize``
   with a random ``state``, kept in a signed, short-lived cookie with the page to return to;
2. the hub, once the user is logged in there, sends the browser to ``<base>/oauth_callback``
   with a code and the same state; the state is checked against the cookie (so no other site
   can finish a login in this browser), and the code is exchanged for the user's token
   (server to server, with the client secret);
3. the token goes into the login cookie (signed, httponly, SameSite=Lax, secure under
   https), and every page checks it with the hub and builds the caller exactly as the API
   does (``api.deps.caller_for_token``): the token's scopes and the user's memberships decide
   what they see.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

import httpx

__all__ = ["HubOAuthClient", "OAuthUnavailable"]


class OAuthUnavailable(Exception):
    """The hub refused or could not be reached while finishing a login."""


@dataclass(frozen=True)
class HubOAuthClient:
    client_id: str
    client_secret: str
    #: Where the hub sends the browser back; must be what the hub registered.
    redirect_uri: str
    #: The hub's authorisation page, as the browser reaches it (through the proxy).
    authorize_url: str
    #: The hub's token endpoint, as the service reaches it.
    token_url: str

    @classmethod
    def from_environment(
        cls, base: str, hub_api_url: str, env: Mapping[str, str] | None = None
    ) -> HubOAuthClient | None:
        """The client the hub set up for this service (a hub-managed service gets these
        variables); None where the service does not run under a hub."""
        env = os.environ if env is None else env
        client_id = env.get("JUPYTERHUB_CLIENT_ID", "")
        secret = env.get("JUPYTERHUB_API_TOKEN", "")
        if not client_id or not secret:
            return None
        hub_base = env.get("JUPYTERHUB_BASE_URL", "/").rstrip("/")
        return cls(
            client_id=client_id,
            client_secret=secret,
            redirect_uri=env.get("JUPYTERHUB_OAUTH_CALLBACK_URL") or f"{base}/oauth_callback",
            authorize_url=f"{hub_base}/hub/api/oauth2/authorize",
            token_url=hub_api_url.rstrip("/") + "/oauth2/token",
        )

    def start(self) -> tuple[str, str]:
        """A new state and the URL to send the browser to."""
        state = secrets.token_urlsafe(24)
        query = urlencode(
            {
                "client_id": self.client_id,
                "redirect_uri": self.redirect_uri,
                "response_type": "code",
                "state": state,
            }
        )
        return state, f"{self.authorize_url}?{query}"

    async def token_for_code(self, code: str) -> str:
        """Exchange the hub's code for the user's token."""
        try:
            async with httpx.AsyncClient(timeout=15) as client:
                r = await client.post(
                    self.token_url,
                    data={
                        "client_id": self.client_id,
                        "client_secret": self.client_secret,
                        "grant_type": "authorization_code",
                        "code": code,
                        "redirect_uri": self.redirect_uri,
                    },
                )
        except httpx.HTTPError as e:
            raise OAuthUnavailable(f"cannot reach JupyterHub: {type(e).__name__}") from None
        if r.status_code != 200:
            raise OAuthUnavailable(f"JupyterHub answered {r.status_code}")
        token = r.json().get("access_token")
        if not isinstance(token, str) or not token:
            raise OAuthUnavailable("JupyterHub's answer held no token")
        return token
