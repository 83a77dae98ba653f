"""A Dask cluster's dashboard, through the service, for its owner alone.

Why a proxy: the scheduler serves its dashboard over HTTPS that requires the cluster's own
client certificate, so no other user of the machine can use its port, and a browser holds no
such certificate. The service holds the cluster's credentials: once the hub's login (the same
as the dashboard pages', ``context.py``; an API token in ``Authorization`` for scripts) shows
that the caller owns the cluster, it forwards the request and presents the certificate for
them, trusting only the cluster's own certificate (it is its own CA; no host name is
checked: the scheduler's address is whatever host it runs on).

Only the owner, not an administrator either: the pages come from the owner's own program
(their scheduler, their environment) and run in the browser on the service's origin, so
another person opening them would run the owner's code with their own login.

Paths go through unchanged: the scheduler serves under the same prefix
(``domain.dask.dashboard_path``), so Bokeh's links and WebSocket addresses need no rewriting.
Cookies and ``Authorization`` never reach the scheduler (the user's program runs there), and
``Set-Cookie`` from it never reaches the browser (it would land on the service's own path).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import ssl
import tempfile
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

import httpx
from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import Response, StreamingResponse
from sqlalchemy import select
from starlette.background import BackgroundTask
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.typing import Subprotocol

from allotment.api.deps import AppState, caller_for_token
from allotment.api.problems import problem_response
from allotment.db.tables import DaskCluster
from allotment.domain.dask import ClusterState
from allotment.errors import PublicError, Unauthenticated
from allotment.schemas import Problem
from allotment.web.context import dashboard_of, error_page, login_redirect, login_token

__all__ = ["router"]

log = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)

#: Under the service's base path; ``rest`` is empty or starts with "/".
PATH = "/dask/{cluster_id}/dashboard{rest:path}"
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

#: Request headers the scheduler gets: what content negotiation and caching need, nothing
#: that identifies the caller to the service (cookies, tokens) or describes the hop.
FORWARDED = frozenset(
    {
        "accept",
        "accept-encoding",
        "accept-language",
        "cache-control",
        "content-type",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "pragma",
        "range",
        "user-agent",
        "x-requested-with",
    }
)
#: Response headers the browser never gets: hop-by-hop ones (RFC 9110 §7.6.1), and cookies.
DROPPED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "set-cookie",
        "set-cookie2",
    }
)
#: How long the scheduler may take to accept a connection, and to answer.
CONNECT_SECONDS = 10.0
READ_SECONDS = 120.0
#: Largest WebSocket message taken from the scheduler (Bokeh's own default limit is 20 MB;
#: its dashboard's messages are far smaller): a scheduler cannot make the service hold more.
MAX_MESSAGE = 16 * 2**20


@dataclass(frozen=True)
class Upstream:
    """Where a cluster's dashboard is and how to reach it."""

    #: ``https://host:port``, as the scheduler reported it.
    origin: str
    context: ssl.SSLContext
    #: The path and query to ask for, exactly as the caller sent them.
    target: str


@functools.lru_cache(maxsize=64)
def client_context(cert: str, key: str) -> ssl.SSLContext:
    """TLS towards one cluster: its certificate is the only CA trusted, and is also the
    client certificate presented (with its key). Cached: building one parses the key."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=cert)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    # The ssl module loads a key only from a file: a private directory (0700) that lives
    # for this call alone.
    with tempfile.TemporaryDirectory(prefix="allotment-dask-") as private:
        path = os.path.join(private, "credentials.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(cert.rstrip("\n") + "\n" + key)
        context.load_cert_chain(path)
    return context


def _refusal(
    request: Request, status: int, title: str, detail: str, headers: dict[str, str] | None = None
) -> Response:
    """An error page for a browser, problem details for anything else."""
    if "text/html" in request.headers.get("accept", ""):
        response: Response = error_page(dashboard_of(request), status, title, detail)
        response.headers.update(headers or {})
        return response
    return problem_response(Problem(title=title, status=status, detail=detail), headers)


def _climbs(target: str) -> bool:
    """Whether a path has a dot segment, written or encoded (``..``, ``%2e%2e``, ``..%2f``):
    forwarded as it is, a cache in front of the hub that tidies paths could file the
    scheduler's answer under another page of the site. (Encoded slashes alone stay: Dask's
    pages name workers by their escaped address, ``info/worker/tls%3A%2F%2F…``.)"""
    path = target.split("?", 1)[0]
    return any(
        part in (".", "..")
        for segment in path.split("/")
        for part in unquote(segment).replace("\\", "/").split("/")
    )


def _raw_target(request: Request) -> str:
    raw = request.scope.get("raw_path")
    path = raw.decode("latin-1") if raw else quote(request.scope["path"])
    query = request.scope.get("query_string", b"").decode("latin-1")
    return path + ("?" + query if query else "")


async def _upstream(request: Request, cluster_id: str, rest: str) -> Upstream | Response:
    """The cluster's dashboard if the caller owns it and it runs; else the answer."""
    board = dashboard_of(request)
    state: AppState = request.app.state.allotment
    if (
        not cluster_id.isdigit()
        or len(cluster_id) > 18
        or rest[:1] not in ("", "/")
        or _climbs(_raw_target(request))
    ):
        return _refusal(request, 404, "Not found", "There is no such page.")
    token = login_token(request, board)
    if token is None:
        return login_redirect(request, board)
    try:
        caller = await caller_for_token(state, token, request)
    except Unauthenticated:
        return login_redirect(request, board)
    except PublicError as e:
        return _refusal(request, e.status, e.title, e.detail)
    async with state.db.read() as session:
        row = (
            await session.execute(
                select(
                    DaskCluster.name,
                    DaskCluster.user_id,
                    DaskCluster.state,
                    DaskCluster.reason,
                    DaskCluster.dashboard,
                    DaskCluster.tls_cert,
                    DaskCluster.tls_key,
                ).where(DaskCluster.id == int(cluster_id))
            )
        ).first()
    if row is None:
        return _refusal(request, 404, "Not found", f"There is no Dask cluster #{cluster_id}.")
    if row.user_id != caller.user_id or caller.via_spawner:
        return _refusal(
            request,
            403,
            "Forbidden",
            f"Dask cluster #{cluster_id} is not yours: only its owner may open its dashboard.",
        )
    cluster_state = ClusterState(row.state)
    if cluster_state.ended:
        why = f" ({row.reason})" if row.reason else ""
        return _refusal(
            request,
            404,
            "Cluster ended",
            f"Dask cluster {row.name!r} has {cluster_state.label}{why}: its dashboard went "
            "with its scheduler.",
        )
    origin = urlsplit(row.dashboard or "")
    if not row.dashboard:
        return _refusal(
            request,
            503,
            "Cluster starting",
            f"Dask cluster {row.name!r} is starting: its dashboard appears once its scheduler "
            "runs. Reload in a few seconds.",
            {"Retry-After": "5"},
        )
    if origin.scheme != "https" or not origin.hostname or origin.path not in ("", "/"):
        return _refusal(
            request,
            502,
            "Dashboard unavailable",
            f"Dask cluster {row.name!r} reported a dashboard address that is not "
            "https://host:port; the service reaches dashboards only over TLS.",
        )
    try:
        context = client_context(row.tls_cert, row.tls_key)
    except (ssl.SSLError, ValueError):
        return _refusal(
            request,
            502,
            "Dashboard unavailable",
            f"Dask cluster {row.name!r} has unusable TLS credentials; stop it and start another.",
        )
    return Upstream(f"https://{origin.netloc}", context, _raw_target(request))


def _unreachable(request: Request, cluster_id: str, why: str) -> Response:
    # Why, only in the log: told apart (refused, timed out…), answers would map the ports
    # the service can reach for whoever reports a dashboard.
    log.info("Dask cluster %s: its dashboard did not answer (%s)", cluster_id, why)
    return _refusal(
        request,
        502,
        "Dashboard unavailable",
        f"The scheduler of Dask cluster #{cluster_id} did not answer. It may be "
        "starting, busy or gone; reload in a few seconds, or see the cluster's state with "
        "`allot dask list`.",
    )


def _response_headers(upstream: httpx.Response, origin: str) -> list[tuple[bytes, bytes]]:
    named = {v.strip().lower() for v in upstream.headers.get_list("connection", split_commas=True)}
    kept = []
    for name, value in upstream.headers.multi_items():
        lower = name.lower()
        if lower in DROPPED or lower in named:
            continue
        if lower == "location" and value.startswith(origin):
            value = value[len(origin) :] or "/"  # the browser stays on the service
        if lower == "cache-control":
            continue  # replaced below: one user's page is never a shared cache's
        kept.append((lower.encode("latin-1"), value.encode("latin-1")))
    kept.append((b"cache-control", _private(upstream.headers.get("cache-control", ""))))
    return kept


def _private(cache_control: str) -> bytes:
    """The scheduler's caching, for the owner's browser alone."""
    kept = [
        d.strip()
        for d in cache_control.split(",")
        if d.strip() and d.strip().split("=")[0].lower() not in ("public", "private", "s-maxage")
    ]
    return ", ".join(["private", *kept]).encode("latin-1")


@router.api_route(PATH, methods=METHODS)
async def dashboard(request: Request, cluster_id: str, rest: str) -> Response:
    """Forward one HTTP request to the cluster's dashboard, streaming its answer back."""
    upstream = await _upstream(request, cluster_id, rest)
    if not isinstance(upstream, Upstream):
        return upstream
    headers = {k: v for k, v in request.headers.items() if k in FORWARDED}
    body = await request.body()
    client = httpx.AsyncClient(
        verify=upstream.context,
        trust_env=False,  # never through a proxy of the environment's
        timeout=httpx.Timeout(READ_SECONDS, connect=CONNECT_SECONDS),
    )
    url = httpx.URL(upstream.origin).copy_with(raw_path=upstream.target.encode("latin-1"))
    try:
        answer = await client.send(
            client.build_request(request.method, url, headers=headers, content=body),
            stream=True,
        )
    except httpx.HTTPError as e:
        await client.aclose()
        return _unreachable(request, cluster_id, type(e).__name__)

    async def close() -> None:
        await answer.aclose()
        await client.aclose()

    response = StreamingResponse(
        answer.aiter_raw(), status_code=answer.status_code, background=BackgroundTask(close)
    )
    response.raw_headers = _response_headers(answer, upstream.origin)
    return response


def _as_request(websocket: WebSocket) -> Request:
    """The handshake as a request: the login and the refusals read only its headers."""
    return Request({**websocket.scope, "type": "http", "method": "GET"})


def _same_origin(request: Request) -> bool:
    """A browser's WebSocket carries its page's origin: only pages of the service's own
    site may open one with the login cookie (no cross-site WebSocket hijacking)."""
    origin = request.headers.get("origin")
    if origin is None:
        return True  # not a browser (scripts send a token)
    hosts = {request.headers.get("host"), request.headers.get("x-forwarded-host")}
    return urlsplit(origin).netloc in hosts - {None}


@router.websocket(PATH)
async def dashboard_socket(websocket: WebSocket, cluster_id: str, rest: str) -> None:
    """Relay one WebSocket (Bokeh's live plots) between the browser and the scheduler."""
    request = _as_request(websocket)
    upstream = await _upstream(request, cluster_id, rest)
    if not isinstance(upstream, Upstream):
        await _deny(websocket, upstream)
        return
    if not _same_origin(request):
        forbidden = "This WebSocket was opened by a page of another site."
        await _deny(websocket, _refusal(request, 403, "Forbidden", forbidden))
        return
    offered = [Subprotocol(p) for p in websocket.scope.get("subprotocols", [])]
    headers = {k: v for k, v in websocket.headers.items() if k in FORWARDED}
    try:
        scheduler = await connect(
            "wss://" + upstream.origin.removeprefix("https://") + upstream.target,
            ssl=upstream.context,
            subprotocols=offered or None,
            additional_headers=headers,
            user_agent_header=None,
            proxy=None,
            compression=None,
            max_size=MAX_MESSAGE,
            open_timeout=CONNECT_SECONDS,
        )
    except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as e:
        await _deny(websocket, _unreachable(request, cluster_id, type(e).__name__))
        return
    async with scheduler:
        await websocket.accept(subprotocol=scheduler.subprotocol)
        await _relay(websocket, scheduler)


async def _deny(websocket: WebSocket, response: Response) -> None:
    """Refuse the handshake with ``response`` (a login redirect, a refusal); a server without
    ASGI's denial responses closes it with "policy violation" instead."""
    try:
        await websocket.send_denial_response(response)
    except RuntimeError:
        await websocket.close(1008)


async def _relay(browser: WebSocket, scheduler: ClientConnection) -> None:
    """Messages both ways until either side closes; then the other is closed with its code."""

    async def inwards() -> None:
        while True:
            message = await browser.receive()
            if message["type"] == "websocket.disconnect":
                await scheduler.close(_sendable(message.get("code")))
                return
            text, data = message.get("text"), message.get("bytes")
            await scheduler.send(text if text is not None else data or b"")

    async def outwards() -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in scheduler:
                if isinstance(message, str):
                    await browser.send_text(message)
                else:
                    await browser.send_bytes(message)
        with contextlib.suppress(RuntimeError, OSError):
            await browser.close(_sendable(scheduler.close_code))

    tasks = [asyncio.create_task(inwards()), asyncio.create_task(outwards())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _sendable(code: int | None) -> int:
    """A close code one may send on: those that only report (no code, connection lost)
    become a normal close or an error."""
    if code is None or code == 1005:
        return 1000
    if code in (1006, 1015) or not (1000 <= code <= 4999):
        return 1011
    return code
