"""The OpenAPI document says what errors really look like: every client error of every
operation is RFC 9457 problem details (``application/problem+json``), FastAPI's default
``HTTPValidationError`` is never sent."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from allotment.schemas import Problem

__all__ = ["document_problems"]

_REF = "#/components/schemas/{model}"
_PROBLEM = {
    "description": "The request was refused: problem details saying why and what to do.",
    "content": {"application/problem+json": {"schema": {"$ref": _REF.format(model="Problem")}}},
}


def _with_problems(document: dict[str, Any]) -> dict[str, Any]:
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    problem = Problem.model_json_schema(ref_template=_REF)
    schemas.update(problem.pop("$defs", {}))
    schemas["Problem"] = problem
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            responses["4XX"] = _PROBLEM
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return document


def document_problems(app: FastAPI) -> None:
    """Make ``app.openapi()`` describe error responses as problem details."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _with_problems(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
