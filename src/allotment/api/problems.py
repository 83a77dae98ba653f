"""Errors as RFC 9457 problem details, written for researchers."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from allotment.errors import PublicError
from allotment.schemas import FieldProblem, Problem

__all__ = ["install_problem_handlers", "problem_response"]

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

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return problem_response(
            Problem(
                title="Internal error",
                status=500,
                detail="Allotment hit an unexpected error; it has been logged. "
                "Tell your administrator the time it happened.",
            )
        )


def _title(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
