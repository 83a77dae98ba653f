"""What every page handler needs: the login (cookie or header) turned into the caller, the
policy in force, templates, and the page's answer when something is wrong."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from allotment.api.deps import AppState, Caller, caller_for_token
from allotment.config.models import Policy
from allotment.controller.view import PolicyView, load_policy_view
from allotment.errors import PublicError, Unauthenticated
from allotment.web import display
from allotment.web.oauth import HubOAuthClient
from allotment.web.signing import Signer

__all__ = ["Dashboard", "Page", "dashboard_of", "open_page"]

TEMPLATES = Path(__file__).with_name("templates")
SESSION_COOKIE = "allotment-dashboard"
STATE_COOKIE = "allotment-oauth-state"
FLASH_COOKIE = "allotment-flash"
#: A login lasts this long at most; the hub token inside it may end sooner (then the hub
#: says so, and the page logs in again).
SESSION_SECONDS = 12 * 3600


@dataclass
class Dashboard:
    """The dashboard's own state, one per application."""

    #: The service's base path without the trailing slash ("" at the root).
    base: str
    signer: Signer
    #: None where the service does not run under a hub: pages then take an
    #: ``Authorization`` header only.
    oauth: HubOAuthClient | None
    templates: Environment

    @property
    def root(self) -> str:
        return f"{self.base}/dashboard"

    def cookie_args(self, request: Request) -> dict[str, Any]:
        https = request.headers.get("x-forwarded-proto", request.url.scheme) == "https"
        return {"path": self.base + "/", "httponly": True, "samesite": "lax", "secure": https}


def new_templates() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["percent"] = display.percent
    env.filters["hours"] = display.hours
    env.filters["gib"] = display.gib
    return env


def dashboard_of(request: Request) -> Dashboard:
    board: Dashboard = request.app.state.dashboard
    return board


@dataclass
class Page:
    """A logged-in request: who, with what token, under which policy."""

    request: Request
    board: Dashboard
    state: AppState
    caller: Caller
    token: str
    view: PolicyView | None

    @property
    def policy(self) -> Policy:
        return self.view.policy if self.view is not None else Policy()

    @property
    def currency(self) -> str:
        return self.policy.currency

    @property
    def tz(self) -> str:
        return self.policy.accounting.time_zone

    def money(self, micros: int | float | None) -> str:
        return display.money(micros, self.currency)

    def time(self, t: Any) -> Any:
        return display.local_time(t, self.tz)

    def url(self, path: str = "", **params: Any) -> str:
        """A dashboard URL; ``params`` replace the current page's (None drops one)."""
        query = {k: v for k, v in self.request.query_params.items() if k not in params}
        query.update({k: str(v) for k, v in params.items() if v is not None})
        target = f"{self.board.root}/{path}" if path else self.request.url.path
        return target + ("?" + urlencode(query) if query else "")

    def render(self, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        flash = self.board.signer.unsign("flash", self.request.cookies.get(FLASH_COOKIE))
        html = self.board.templates.get_template(template).render(
            page=self,
            caller=self.caller,
            root=self.board.root,
            static=f"{self.board.root}/static",
            xsrf=self.board.signer.xsrf_token(self.token),
            flash=flash,
            **values,
        )
        response = HTMLResponse(html, status_code=status)
        if flash is not None:
            response.delete_cookie(FLASH_COOKIE, path=self.board.base + "/")
        return response

    def done(self, target: str, message: str, *, ok: bool = True) -> Response:
        """After a form: back to ``target`` (303), with ``message`` shown once there."""
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            FLASH_COOKIE,
            self.board.signer.sign("flash", {"text": message, "ok": ok}),
            max_age=60,
            **self.board.cookie_args(self.request),
        )
        return response


def error_page(board: Dashboard, status: int, title: str, detail: str) -> HTMLResponse:
    html = board.templates.get_template("error.html").render(
        title=title, detail=detail, root=board.root, static=f"{board.root}/static", page=None
    )
    return HTMLResponse(html, status_code=status)


def login_redirect(request: Request, board: Dashboard) -> Response:
    """Start the hub's OAuth flow, coming back to this page afterwards."""
    if board.oauth is None:
        return error_page(
            board,
            401,
            "Log in through JupyterHub",
            "This service does not run as a JupyterHub service, so the dashboard cannot log you "
            "in: open it through the hub (`allot up` sets that up), or send an API token in an "
            "Authorization header.",
        )
    state, url = board.oauth.start()
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    response = RedirectResponse(url, status_code=302)
    response.set_cookie(
        STATE_COOKIE,
        board.signer.sign("state", {"state": state, "next": target}),
        max_age=600,
        **board.cookie_args(request),
    )
    response.delete_cookie(SESSION_COOKIE, path=board.base + "/")
    return response


def login_token(request: Request, board: Dashboard) -> str | None:
    """The hub token of a request's login: an Authorization header's, else the cookie's."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() in ("token", "bearer") and value.strip():
        return value.strip()
    session = board.signer.unsign("session", request.cookies.get(SESSION_COOKIE))
    if session is None or time.time() - float(session.get("at", 0)) > SESSION_SECONDS:
        return None
    token = session.get("token")
    return token if isinstance(token, str) and token else None


async def open_page(request: Request) -> Page | Response:
    """The page's caller, or the answer instead of the page: a login, or an error page."""
    board = dashboard_of(request)
    state: AppState = request.app.state.allotment
    token = login_token(request, board)
    if token is None:
        return login_redirect(request, board)
    try:
        caller = await caller_for_token(state, token, request)
    except Unauthenticated:
        return login_redirect(request, board)
    except PublicError as e:
        return error_page(board, e.status, e.title, e.detail)
    async with state.db.read() as session:
        view = await session.run_sync(load_policy_view, state.policy_views)
    return Page(request, board, state, caller, token, view)
