"""Wires the dashboard into the service: its pages under ``<base>/dashboard/``, the hub's
OAuth callback at ``<base>/oauth_callback`` (what the hub registers for the service), its
static files (templates' script, style and the vendored Chart.js), Dask clusters' dashboards
for their owners (``dask_proxy.py``), and ``<base>/`` (where the hub's Services menu links)
sending the browser to the dashboard."""

from __future__ import annotations

import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from allotment.web import account, dask_proxy, forms, pages
from allotment.web.context import (
    SESSION_COOKIE,
    STATE_COOKIE,
    Dashboard,
    dashboard_of,
    error_page,
    new_templates,
)
from allotment.web.oauth import HubOAuthClient, OAuthUnavailable
from allotment.web.signing import Signer, load_key

__all__ = ["install_dashboard"]

STATIC = Path(__file__).with_name("static")


def install_dashboard(app: FastAPI, base: str, *, data_dir: Path | None, hub_api_url: str) -> None:
    """Add the dashboard to ``app``, served under ``base`` (no trailing slash)."""
    board = Dashboard(
        base=base,
        signer=Signer(load_key(data_dir)),
        oauth=HubOAuthClient.from_environment(base, hub_api_url),
        templates=new_templates(),
    )
    app.state.dashboard = board
    root = f"{base}/dashboard"
    app.mount(f"{root}/static", StaticFiles(directory=STATIC), name="dashboard-static")
    for module in (pages, account, forms):
        app.include_router(module.router, prefix=root)
    # Dask dashboards under <base>/dask/<id>/dashboard/: the scheduler serves its pages there.
    app.include_router(dask_proxy.router, prefix=base)

    @app.get(f"{base}/", include_in_schema=False)
    async def service_root() -> Response:
        return RedirectResponse(f"{root}/", status_code=302)

    @app.get(root, include_in_schema=False)
    async def dashboard_root() -> Response:
        return RedirectResponse(f"{root}/", status_code=302)

    @app.get(f"{base}/oauth_callback", include_in_schema=False)
    async def oauth_callback(request: Request) -> Response:
        return await _callback(request)

    @app.get(f"{root}/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        response = error_page(
            board, 200, "Logged out", "You are logged out of the dashboard (not of the hub)."
        )
        response.delete_cookie(SESSION_COOKIE, path=base + "/")
        return response


async def _callback(request: Request) -> Response:
    board = dashboard_of(request)
    saved = board.signer.unsign("state", request.cookies.get(STATE_COOKIE))
    given = request.query_params.get("state", "")
    code = request.query_params.get("code", "")
    if board.oauth is None or saved is None or not given or saved.get("state") != given:
        return error_page(
            board,
            403,
            "Login not accepted",
            "This login's state does not match the one this browser started (it may be old, "
            "or another site sent you here). Open the dashboard again to log in.",
        )
    if not code:
        return error_page(board, 403, "Login not accepted", "JupyterHub sent no login code.")
    try:
        token = await board.oauth.token_for_code(code)
    except OAuthUnavailable as e:
        return error_page(
            board,
            503,
            "JupyterHub unavailable",
            f"The login could not be finished ({e}); try again.",
        )
    target = str(saved.get("next") or "")
    if not target.startswith(board.root + "/") and target != board.root:
        target = board.root + "/"  # only ever back into the dashboard
    response = RedirectResponse(target, status_code=302)
    response.set_cookie(
        SESSION_COOKIE,
        board.signer.sign("session", {"token": token, "at": time.time()}),
        **board.cookie_args(request),
    )
    response.delete_cookie(STATE_COOKIE, path=board.base + "/")
    return response
