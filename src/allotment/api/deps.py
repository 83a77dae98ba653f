"""Request dependencies: the application state and the authenticated caller."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from allotment.api.auth import (
    ADMIN_IDENTITY_SCOPES,
    ADMIN_PREFIX,
    Identity,
    TokenVerifier,
    token_sha256,
)
from allotment.clock import Clock
from allotment.config.models import Policy
from allotment.db import repository as repo
from allotment.db.engine import Database
from allotment.domain.permissions import Principal, expand_scopes
from allotment.errors import Forbidden, Unauthenticated

__all__ = ["AppState", "Caller", "CallerDep", "StateDep"]


@dataclass
class AppState:
    db: Database
    verifier: TokenVerifier
    clock: Clock
    #: The policy given at start-up, applied when the service starts (None: keep the database's).
    policy: Policy | None = None
    #: Hub user name → user id; users are never deleted, so entries never go stale.
    user_ids: dict[str, int] = field(default_factory=dict)


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.allotment
    return state


StateDep = Annotated[AppState, Depends(get_state)]


@dataclass(frozen=True, slots=True)
class Caller:
    principal: Principal
    user_id: int

    @property
    def name(self) -> str:
        return self.principal.user


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() not in ("token", "bearer") or not token.strip():
        raise Unauthenticated(
            "Send a JupyterHub API token as `Authorization: token <token>`. "
            "Inside a session, $JUPYTERHUB_API_TOKEN holds one; else create one on the hub's "
            "Token page."
        )
    return token.strip()


async def _identity(state: AppState, token: str) -> Identity:
    if token.startswith(ADMIN_PREFIX):
        async with state.db.read() as session:
            row = await repo.admin_token(session, token_sha256(token))
        if row is None:
            raise Unauthenticated("This admin token is not valid (revoked or mistyped).")
        return Identity(f"admin-token:{row.name}", ADMIN_IDENTITY_SCOPES)
    return await state.verifier.hub_user(token)


async def get_caller(request: Request, state: StateDep) -> Caller:
    identity = await _identity(state, _bearer(request))
    scopes = expand_scopes(identity.scopes)
    if not scopes:
        raise Forbidden(
            "Your token carries no Allotment permission (custom:allotment:read or more). "
            "Ask your administrator for a role that grants it, or create a token with it."
        )
    user_id = state.user_ids.get(identity.name)
    async with state.db.read() as session:
        memberships = await repo.memberships_of(session, identity.name)
    if user_id is None:
        async with state.db.write() as session:
            user_id = (await repo.ensure_user(session, identity.name, state.clock.now())).id
        state.user_ids[identity.name] = user_id
    return Caller(Principal(identity.name, scopes, tuple(memberships)), user_id)


CallerDep = Annotated[Caller, Depends(get_caller)]
