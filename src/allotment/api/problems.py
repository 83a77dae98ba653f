"""Errors as RFC 9457 problem details, written for researchers.

Errors the application expects (``PublicError``, invalid requests, unknown addresses) are
answered by exception handlers. Everything else is answered by ``Unexpected``, a middleware
inside Starlette's own error middleware, which would answer and then re-raise, so that
uvicorn closes the connection and the client's next request on it fails with a reset. Here
the error is answered and the connection stays usable: 503 with ``Retry-After`` while the
database is unavailable (``db/outage.py``; logged once when it starts and once when it
ends), 500 with a logged traceback for anything else.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from allotment.db.heartbeat import probe
from allotment.db.outage import Outage, OutageLog, classify
from allotment.errors import PublicError
from allotment.schemas import FieldProblem, Problem

if TYPE_CHECKING:
    from allotment.api.deps import AppState

__all__ = [
    "Unexpected",
    "install_problem_handlers",
    "outage_response",
    "problem_response",
    "stop_outage_probe",
]

log = logging.getLogger(__name__)
MEDIA_TYPE = "application/problem+json"


def problem_response(problem: Problem, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        problem.model_dump(exclude_none=True),
        status_code=problem.status,
        media_type=MEDIA_TYPE,
        headers=headers,
    )


def _field(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc)


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(PublicError)
    async def _public(_: Request, exc: PublicError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return problem_response(
            Problem(title=exc.title, status=exc.status, detail=exc.detail), headers
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            FieldProblem(field=_field(tuple(e["loc"])), message=e["msg"]) for e in exc.errors()
        ]
        detail = "; ".join(f"{e.field}: {e.message}" for e in errors[:5])
        return problem_response(
            Problem(
                title="Invalid request",
                status=422,
                detail=f"The request is not valid: {detail}.",
                errors=errors,
            )
        )

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else "The request failed."
        if exc.status_code == 404 and detail == "Not Found":
            detail = "There is nothing at this address. The API lives under /api/; see /docs."
        if exc.status_code == 405:
            detail = "This address does not accept that method; see /docs."
        return problem_response(
            Problem(title=_title(exc.status_code), status=exc.status_code, detail=detail)
        )

    app.add_middleware(Unexpected)


def outage_response(outage: Outage) -> JSONResponse:
    """503 with ``Retry-After``: the database is unavailable, and trying again will work."""
    return problem_response(
        Problem(
            title="Service Unavailable",
            status=503,
            # The first sentence says what is wrong (clients repeat it while they retry).
            detail=f"{outage.detail[:1].upper()}{outage.detail[1:]}. Try again in "
            f"{outage.retry_after} s; nothing Allotment acknowledged before is lost.",
        ),
        {"Retry-After": str(outage.retry_after)},
    )


def _internal_error() -> JSONResponse:
    return problem_response(
        Problem(
            title="Internal error",
            status=500,
            detail="Allotment hit an unexpected error; it has been logged. "
            "Tell your administrator the time it happened.",
        )
    )


class Unexpected:
    """Answers every error no handler took, leaving the connection open (see the module's
    docstring); an error after the answer began is passed on (the connection must close)."""

    #: Seconds between tries of the database while an outage lasts, to log its end.
    PROBE_EVERY = 1.0

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.outage = OutageLog("API", "requests answered 503", log)
        self._prober: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as exc:
            if started:
                raise
            outage = classify(exc)
            if outage is None:
                log.error("unhandled error in %s %s", scope["method"], scope["path"], exc_info=exc)
                response = _internal_error()
            else:
                if self.outage.failed(outage):
                    self._watch(scope)
                response = outage_response(outage)
            await response(scope, receive, send)

    def _watch(self, scope: Scope) -> None:
        """Try the database until it answers, to log the end of the outage once."""
        if self._prober is not None and not self._prober.done():
            return
        app = scope["app"]
        state = getattr(app.state, "allotment", None)
        if state is None:
            return
        self._prober = asyncio.get_running_loop().create_task(self._probe(state))
        # Where the lifespan finds it, to end it before the database is disposed of.
        app.state.outage_probe = self._prober

    async def _probe(self, state: AppState) -> None:
        db, clock = state.db, state.clock
        while self.outage.current is not None:
            await asyncio.sleep(self.PROBE_EVERY)
            try:
                await probe(db, clock.now())
            except Exception as e:
                if classify(e) is None:
                    log.warning("checking whether the database is back failed: %s", e)
                continue
            self.outage.recovered()


async def stop_outage_probe(app: FastAPI) -> None:
    """End the outage's probe (``Unexpected._watch``), if one runs: at shutdown, before the
    database it tries is disposed of (it would try a closed one, or open it again)."""
    task: asyncio.Task[None] | None = getattr(app.state, "outage_probe", None)
    if task is None or task.done():
        return
    task.cancel()
    await asyncio.wait([task])


def _title(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
