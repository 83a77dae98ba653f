"""An Allotment service built in-process on a given database, for API tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from fastapi import FastAPI

from allotment.api.app import Settings, create_app
from allotment.clock import FakeClock
from allotment.config import load_policy, parse_policy

ROOT = Path(__file__).resolve().parents[2]
BASE = "http://allotment.test/services/allotment/api/"


@dataclass
class Service:
    app: FastAPI
    admin_token: str
    clock: FakeClock
    data_dir: Path

    def client(self, token: str | None = None) -> httpx.AsyncClient:
        """An HTTP client of this service, authenticated with ``token`` (or none)."""
        headers = {"Authorization": f"token {token}"} if token else {}
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url=BASE, headers=headers
        )

    def admin(self) -> httpx.AsyncClient:
        return self.client(self.admin_token)


@asynccontextmanager
async def running_service(
    database_url: str,
    data_dir: Path,
    *,
    policy_file: str = "examples/department.yaml",
    policy_text: str | None = None,
    hub_api_url: str = "http://127.0.0.1:9/hub/api",
    token_cache_seconds: int = 0,
) -> AsyncIterator[Service]:
    policy = (
        parse_policy(policy_text, environ={})
        if policy_text is not None
        else load_policy(ROOT / policy_file, environ={})
    )
    clock = FakeClock()
    app = create_app(
        Settings(
            database_url=database_url,
            data_dir=data_dir,
            hub_api_url=hub_api_url,
            token_cache_seconds=token_cache_seconds,
            policy=policy,
        ),
        clock=clock,
    )
    async with app.router.lifespan_context(app):
        token = (data_dir / "admin-token").read_text().strip()
        yield Service(app, token, clock, data_dir)
