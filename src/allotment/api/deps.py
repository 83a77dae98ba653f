"""Request dependencies: the application state and the authenticated caller.

The caller is resolved without touching the database when the caches are warm: the hub's
answer for a token, the user's id, memberships and default account are kept for
``token_cache_seconds`` (see ``api.cache``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated
from urllib.parse import unquote

from fastapi import Depends, Header, Request
from sqlalchemy import select

from allotment.api.auth import (
    ADMIN_IDENTITY,
    ADMIN_IDENTITY_SCOPES,
    ADMIN_PREFIX,
    Identity,
    TokenVerifier,
    token_sha256,
)
from allotment.api.cache import TtlCache
from allotment.api.pending import PendingCounts
from allotment.backends.base import Backend
from allotment.backends.registry import backends_for
from allotment.clock import Clock
from allotment.config.models import LimitsSpec, Policy
from allotment.controller.nudge import nudge_other
from allotment.controller.service import Controller
from allotment.controller.view import ViewCache
from allotment.db import repository as repo
from allotment.db.catalog import Catalog, load_catalog
from allotment.db.engine import Database
from allotment.db.group_commit import GroupCommit
from allotment.db.tables import Account, PolicyVersion, User
from allotment.domain.accounts import Membership
from allotment.domain.permissions import Principal, Scope, expand_scopes
from allotment.errors import Forbidden, InvalidRequest, Unauthenticated

__all__ = [
    "AppState",
    "Caller",
    "CallerDep",
    "IdempotencyKey",
    "StateDep",
    "UserContext",
    "caller_for_token",
]


@dataclass(frozen=True, slots=True)
class UserContext:
    user_id: int
    memberships: tuple[Membership, ...]
    #: Path of the account charged when a request names none.
    default_account: str | None


@dataclass
class AppState:
    db: Database
    verifier: TokenVerifier
    clock: Clock
    inserts: GroupCommit
    #: How long cached permissions and catalogue entries may be served.
    cache_seconds: float = 0
    #: The controller, when this process runs it.
    controller: Controller | None = None
    data_dir: Path | None = None
    #: ``service.installation``; None: derived from ``data_dir``.
    installation: str | None = None
    #: Backends by name, given to ``create_app``; None: the controller's where this process
    #: runs it, else built from the registry when first needed (reading a job's output).
    backends: Mapping[str, Backend] | None = None
    #: Built here (no controller, none given): the policy version they were built for.
    _built: tuple[int, Mapping[str, Backend]] | None = field(default=None, init=False)
    #: Parsed policies by version, for quotes.
    policy_views: ViewCache = field(default_factory=dict)
    admin_tokens: TtlCache[str, str] = field(init=False)
    users: TtlCache[str, UserContext] = field(init=False)
    _catalog: TtlCache[int, Catalog] = field(init=False)
    _pending_cap: TtlCache[int, int] = field(init=False)
    #: Each user's pending workloads, for ``limits.pending_per_user``.
    pending: PendingCounts = field(init=False)

    def __post_init__(self) -> None:
        self.admin_tokens = TtlCache(self.cache_seconds)
        self.users = TtlCache(self.cache_seconds)
        self._catalog = TtlCache(self.cache_seconds, max_entries=1)
        self._pending_cap = TtlCache(self.cache_seconds, max_entries=1)
        self.pending = PendingCounts(self.cache_seconds)

    async def pending_cap(self) -> int:
        """Most workloads one user may have pending: the policy's ``limits.pending_per_user``."""
        cached = self._pending_cap.get(0)
        if cached is None:
            async with self.db.read() as session:
                document = (
                    await session.execute(
                        select(PolicyVersion.document).order_by(PolicyVersion.id.desc()).limit(1)
                    )
                ).scalar_one_or_none()
            limits = (document or {}).get("limits") or {}
            cached = LimitsSpec.model_validate(limits).pending_per_user
            self._pending_cap.put(0, cached)
        return cached

    async def catalog(self) -> Catalog:
        cached = self._catalog.get(0)
        if cached is None:
            async with self.db.read() as session:
                cached = await load_catalog(session)
            self._catalog.put(0, cached)
        return cached

    async def backend(self, name: str) -> Backend | None:
        """The backend called ``name`` (a pool's ``backend:``), or None where this service
        runs no such backend.

        A process without the controller builds its own from the policy in force, only to
        read through it (output): it never closes them, since closing tidies what the
        controller's process owns (the local backend's control groups).
        """
        if self.backends is not None:
            return self.backends.get(name)
        if self.controller is not None:
            return self.controller.backends.get(name)
        if self.data_dir is None:
            return None
        async with self.db.read() as session:
            newest = (
                await session.execute(
                    select(PolicyVersion.id).order_by(PolicyVersion.id.desc()).limit(1)
                )
            ).scalar_one_or_none()
            if newest is None:
                return None
            if self._built is None or self._built[0] != newest:  # a policy applied since
                document = (
                    await session.execute(
                        select(PolicyVersion.document).where(PolicyVersion.id == newest)
                    )
                ).scalar_one()
                policy = Policy.model_validate(document)
                self._built = (
                    newest,
                    backends_for(policy, self.data_dir, installation=self.installation),
                )
        return self._built[1].get(name)

    def workloads_changed(self, workload: int | None = None) -> None:
        """A submission or a cancel: have the controller act on it soon, here or in the
        process that runs it."""
        if self.controller is not None:
            if workload is not None:
                self.controller.wake(workload)
            self.controller.nudge()
        elif self.data_dir is not None:
            nudge_other(self.data_dir)

    def changed(self) -> None:
        """Drop cached permissions and catalogue after this process changed them."""
        self.users.clear()
        self._catalog.clear()
        self._pending_cap.clear()
        self.admin_tokens.clear()


async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.allotment
    return state


StateDep = Annotated[AppState, Depends(get_state)]


@dataclass(frozen=True, slots=True)
class Caller:
    principal: Principal
    user_id: int
    default_account: str | None
    #: The hub's spawner acts for this user: it may start sessions (it builds their command).
    via_spawner: bool = False

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


ON_BEHALF_OF = "X-Allotment-User"
#: Longest user name the database holds.
MAX_USER_NAME = 255
_ACTING_SCOPES = frozenset({Scope.READ.value, Scope.SUBMIT.value})


def _acting_for(identity: Identity, request: Request) -> Identity:
    """A service token (the hub's spawner) acts for the hub user named in ``X-Allotment-User``,
    with ``read`` and ``submit`` only, and only when it holds ``custom:allotment:spawn``."""
    if Scope.SPAWN.value not in identity.scopes:
        raise Forbidden(
            f"Service '{identity.name}' may not use Allotment: grant its role "
            f"{Scope.SPAWN.value} (the hub's spawner needs it), or use a user's token."
        )
    try:  # percent-encoded UTF-8 (allotment.client sends it so)
        user = unquote(request.headers.get(ON_BEHALF_OF, ""), errors="strict")
    except UnicodeDecodeError:
        raise InvalidRequest(f"{ON_BEHALF_OF} is not percent-encoded UTF-8.") from None
    if not user:
        raise InvalidRequest(
            f"Service '{identity.name}' acts for a hub user: name them in the {ON_BEHALF_OF} header."
        )
    if user != user.strip() or any(c < " " or c == "\x7f" for c in user):
        raise InvalidRequest(
            f"{ON_BEHALF_OF} holds a control character or blank at an end; no hub user name does."
        )
    if len(user) > MAX_USER_NAME:
        raise InvalidRequest(
            f"{ON_BEHALF_OF} is {len(user)} characters; a user name has at most {MAX_USER_NAME}."
        )
    return Identity(user, _ACTING_SCOPES, "spawner")


async def _identity(state: AppState, token: str, request: Request) -> Identity:
    if not token.startswith(ADMIN_PREFIX):
        identity = await state.verifier.hub_user(token)
        if identity.kind == "service":
            identity = _acting_for(identity, request)
        if "/" in identity.name:
            # JupyterHub never names a user so; the admin's identities are named so.
            raise Forbidden(f"{identity.name!r} is not a JupyterHub user name (it has a '/').")
        return identity
    digest = token_sha256(token)
    name = state.admin_tokens.get(digest)
    if name is None:
        async with state.db.read() as session:
            row = await repo.admin_token(session, digest)
        if row is None:
            raise Unauthenticated("This admin token is not valid (revoked or mistyped).")
        name = ADMIN_IDENTITY + row.name
        state.admin_tokens.put(digest, name)
    return Identity(name, ADMIN_IDENTITY_SCOPES)


async def _user_context(state: AppState, name: str) -> UserContext:
    ctx = state.users.get(name)
    if ctx is not None:
        return ctx
    async with state.db.read() as session:
        row = (
            await session.execute(
                select(User.id, Account.path)
                .outerjoin(Account, Account.id == User.default_account_id)
                .where(User.name == name)
            )
        ).first()
        memberships = await repo.memberships_of(session, name)
    if row is None:
        async with state.db.write() as session:
            user_id = (await repo.ensure_user(session, name, state.clock.now())).id
        default = None
    else:
        user_id, default = row
    ctx = UserContext(user_id, tuple(memberships), default)
    state.users.put(name, ctx)
    return ctx


async def get_caller(request: Request, state: StateDep) -> Caller:
    return await caller_for_token(state, _bearer(request), request)


async def caller_for_token(state: AppState, token: str, request: Request) -> Caller:
    """The caller a token stands for: the API's bearer token, or the hub token the dashboard
    keeps in its signed cookie (web/), checked by the same rules."""
    identity = await _identity(state, token, request)
    if len(identity.name) > MAX_USER_NAME:
        raise Forbidden(
            f"Allotment serves users whose names have at most {MAX_USER_NAME} characters."
        )
    scopes = expand_scopes(identity.scopes)
    # The metrics scope is for scraping …/api/metrics alone (routes/metrics.py).
    if not scopes - {Scope.METRICS}:
        raise Forbidden(
            "Your token carries no Allotment permission (custom:allotment:read or more). "
            "Ask your administrator for a role that grants it, or create a token with it."
        )
    ctx = await _user_context(state, identity.name)
    return Caller(
        Principal(identity.name, scopes, ctx.memberships),
        ctx.user_id,
        ctx.default_account,
        via_spawner=identity.kind == "spawner",
    )


CallerDep = Annotated[Caller, Depends(get_caller)]


#: The ``Idempotency-Key`` header of a creation: a retry with the same key gets what the
#: first request made (status 200) instead of a second one.
IdempotencyKey = Annotated[
    str | None,
    Header(
        min_length=1,
        max_length=128,
        pattern=r"^[!-~]+$",
        description="1-128 visible ASCII characters, e.g. a UUID.",
    ),
]
