"""The application factory. Nothing is created at import time, so tests build as many as
they like, each on its own database."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI
from sqlalchemy import select

from allotment import __version__
from allotment.api.auth import TokenVerifier, new_admin_token, token_sha256
from allotment.api.deps import AppState
from allotment.api.limits import RequestBounds
from allotment.api.openapi import document_problems
from allotment.api.problems import install_problem_handlers, stop_outage_probe
from allotment.api.routes import (
    accounts,
    audit,
    budgets,
    catalog,
    dask,
    health,
    me,
    meter,
    metrics,
    policy,
    quote,
    usage,
    users,
    workloads,
)
from allotment.backends.base import Backend
from allotment.clock import Clock, SystemClock
from allotment.config.models import Policy
from allotment.controller.service import Controller, ControllerSettings
from allotment.db.engine import Database, sqlite_url
from allotment.db.group_commit import GroupCommit
from allotment.db.policy_sync import apply_policy, identity_warnings
from allotment.db.tables import AdminToken
from allotment.web.routes import install_dashboard

__all__ = [
    "Settings",
    "app_from_environment",
    "create_app",
    "EARLIER_ROOT_DATA_DIR",
    "default_data_dir",
    "earlier_data_dir",
    "prepare_once",
    "settings_from_policy",
]

log = logging.getLogger("allotment")


#: Where `allot serve` kept its data as root before it had a directory of its own.
EARLIER_ROOT_DATA_DIR = Path("/var/lib/allotment")


ROOT_DATA_DIR = Path("/var/lib/allotment-service")


def earlier_data_dir(
    data_dir: Path, earlier: Path = EARLIER_ROOT_DATA_DIR, default: Path = ROOT_DATA_DIR
) -> str | None:
    """What to do when ``data_dir`` is the ``default`` as root, is new, and an earlier `allot
    serve` left its database in ``earlier`` (now `allot up`'s): starting empty would hide every
    job."""
    if data_dir != default or data_dir.exists():
        return None
    if not (earlier / "allotment.sqlite").exists():
        return None
    return (
        f"An earlier `allot serve` kept its database in {earlier}, which is now `allot up`'s; "
        f"this version's default is {data_dir}. Move it there: `mkdir -m 700 {data_dir} && "
        f"mv {earlier}/allotment.sqlite* {earlier}/admin-token {earlier}/local {data_dir}/`; "
        f"or keep it where it is with ALLOTMENT_DATA_DIR={earlier} (and run no `allot up` on "
        "this machine)."
    )


def default_data_dir() -> Path:
    if env := os.environ.get("ALLOTMENT_DATA_DIR"):
        return Path(env)
    if os.geteuid() == 0:
        # Not /var/lib/allotment: that is `allot up`'s (the hub, and its own service in
        # service/ there); two services must never share a database.
        return ROOT_DATA_DIR
    return Path.home() / ".local" / "share" / "allotment"


@dataclass(frozen=True)
class Settings:
    database_url: str
    data_dir: Path
    base_url: str = "/services/allotment/"
    hub_api_url: str = "http://127.0.0.1:8081/hub/api"
    token_cache_seconds: int = 60
    #: Applied at start-up when given.
    policy: Policy | None = None
    #: Write an admin token to ``data_dir/admin-token`` at start-up when none is valid.
    admin_token_file: bool = True
    #: True when another process already ran ``prepare`` (worker processes).
    prepared: bool = False
    #: Run the controller (scheduling, execution) in this process, if no other process does.
    controller: bool = False
    #: Largest request body read, in bytes (``service.max_request_body``).
    max_request_body: int = 2**20
    #: ``service.installation``; None: derived from ``data_dir`` (``allotment.installation``).
    installation: str | None = None
    #: Where this service listens (``http://host:port/services/allotment/``): where Dask
    #: schedulers report when the policy's ``dask.service_url`` is unset. None: loopback at
    #: `allot serve`'s default port.
    listen_url: str | None = None


def settings_from_policy(policy: Policy, *, apply: bool = True) -> Settings:
    """Service settings from a policy's ``service`` section; ``apply`` it at start-up or not."""
    s = policy.service
    data_dir = Path(s.data_dir) if s.data_dir else default_data_dir()
    return Settings(
        database_url=s.database_url or sqlite_url(data_dir),
        data_dir=data_dir,
        base_url=s.base_url,
        hub_api_url=s.hub_api_url,
        token_cache_seconds=s.token_cache_seconds,
        max_request_body=s.max_request_body,
        installation=s.installation,
        policy=policy if apply else None,
    )


async def _ensure_admin_token(db: Database, path: Path, clock: Clock) -> None:
    """Keep a valid admin token in ``path`` (mode 0600) for first setup and local use."""
    if path.exists():
        token = path.read_text().strip()
        async with db.read() as session:
            row = (
                await session.execute(
                    select(AdminToken).where(
                        AdminToken.token_sha256 == token_sha256(token),
                        AdminToken.revoked_at.is_(None),
                    )
                )
            ).scalar_one_or_none()
        if row is not None:
            return
    token = new_admin_token()
    async with db.write() as session:
        old = (
            await session.execute(select(AdminToken).where(AdminToken.name == "setup"))
        ).scalar_one_or_none()
        if old is not None:
            old.token_sha256, old.revoked_at, old.created_at = (
                token_sha256(token),
                None,
                clock.now(),
            )
        else:
            session.add(
                AdminToken(name="setup", token_sha256=token_sha256(token), created_at=clock.now())
            )
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.replace(tmp, path)
    log.info("wrote a new admin token to %s", path)


async def prepare(db: Database, settings: Settings, clock: Clock) -> None:
    """Once per start of the service: migrate, apply the policy, keep an admin token."""
    await db.upgrade()
    if settings.policy is not None:
        async with db.write() as session:
            _, changes = await apply_policy(
                session, settings.policy, actor="allot serve", now=clock.now()
            )
            warnings = await identity_warnings(session, settings.policy)
        for change in changes:
            log.info("policy: %s", change)
        for warning in warnings:
            log.warning("policy: %s", warning)
    if settings.admin_token_file:
        await _ensure_admin_token(db, settings.data_dir / "admin-token", clock)


async def prepare_once(settings: Settings) -> None:
    """``prepare`` in a process of its own, before worker processes start."""
    db = Database(settings.database_url)
    try:
        await prepare(db, settings, SystemClock())
    finally:
        await db.dispose()


def app_from_environment() -> FastAPI:
    """Factory for worker processes of `allot serve --workers N`; the parent prepared."""
    from allotment.config import load_policy
    from allotment.config.models import Policy

    path = os.environ.get("ALLOTMENT_CONFIG")
    policy = load_policy(path) if path else Policy()
    settings = dataclasses.replace(
        settings_from_policy(policy, apply=False),
        admin_token_file=False,
        prepared=True,
        controller=os.environ.get("ALLOTMENT_CONTROLLER", "1") == "1",
        listen_url=os.environ.get("ALLOTMENT_LISTEN_URL") or None,
    )
    return create_app(settings)


def create_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    backends: Mapping[str, Backend] | None = None,
) -> FastAPI:
    """The service. ``backends`` by name (a pool's ``backend:``; tests pass a fake); None:
    built from the registry for the policy in force (``backends/registry.py``)."""
    base = "/" + settings.base_url.strip("/")
    base = "" if base == "/" else base
    clock = clock or SystemClock()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database(settings.database_url)
        if not settings.prepared:
            await prepare(db, settings, clock)
        inserts = GroupCommit(db)
        inserts.start()
        controller = None
        if settings.controller:
            controller = Controller(
                db,
                clock,
                ControllerSettings(settings.data_dir, installation=settings.installation),
                backends=backends,
            )
            if not await controller.start():
                controller = None
        app.state.allotment = AppState(
            db=db,
            verifier=TokenVerifier(settings.hub_api_url, settings.token_cache_seconds),
            clock=clock,
            inserts=inserts,
            cache_seconds=settings.token_cache_seconds,
            controller=controller,
            data_dir=settings.data_dir,
            installation=settings.installation,
            backends=backends,
        )
        try:
            yield
        finally:
            if controller is not None:
                await controller.stop()
            await inserts.stop()
            await stop_outage_probe(app)
            await db.dispose()

    app = FastAPI(
        title="Allotment",
        version=__version__,
        summary="Fair, visible, self-service shared research computers.",
        lifespan=lifespan,
        openapi_url=f"{base}/api/openapi.json",
        docs_url=f"{base}/api/docs",
        redoc_url=None,
    )
    install_problem_handlers(app)
    app.add_middleware(RequestBounds, max_body=settings.max_request_body)
    # Matched in this order: the hot paths first.
    for module in (workloads, meter, me, quote, accounts, catalog, users, policy, health, usage):
        app.include_router(module.router, prefix=f"{base}/api")
    app.include_router(audit.router, prefix=f"{base}/api")
    app.include_router(metrics.router, prefix=f"{base}/api")
    app.include_router(budgets.router, prefix=f"{base}/api")
    app.include_router(dask.router, prefix=f"{base}/api")
    app.state.dask_site = dask.DaskSite(
        settings.base_url, settings.listen_url or f"http://127.0.0.1:8750{base}/"
    )
    install_dashboard(app, base, data_dir=settings.data_dir, hub_api_url=settings.hub_api_url)
    document_problems(app)
    return app
