"""Bounds every request meets before a route sees it: the size of its body, and no NUL
character in its address (no name, path or filter the API knows can hold one, and PostgreSQL
cannot store one).

A body is counted as it arrives, so a client that sends no ``Content-Length`` (chunked) or
one that lies is stopped at the limit too, without the service holding more than the limit.
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from allotment.api.problems import problem_response
from allotment.domain.quantities import describe_size
from allotment.schemas import Problem

__all__ = ["RequestBounds"]


class RequestBounds:
    """ASGI middleware: 413 for a body over ``max_body`` bytes, 422 for a NUL in the address."""

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    def _too_large(self, found: str) -> Problem:
        limit = describe_size(self.max_body)
        return Problem(
            title="Request too large",
            status=413,
            detail=f"The request body is {found}; the limit is {limit} "
            "(service.max_request_body). Send large inputs as files the workload reads.",
        )

    def _refusal(self, scope: Scope) -> Problem | None:
        """What is wrong with the request before its body is read, or None."""
        address = scope.get("raw_path") or scope["path"].encode()
        if b"\0" in unquote_to_bytes(address) or b"\0" in unquote_to_bytes(scope["query_string"]):
            return Problem(
                title="Invalid request",
                status=422,
                detail="The address holds a NUL character (%00); no name or filter can.",
            )
        length = dict(scope["headers"]).get(b"content-length")
        if length is None:
            return None
        if not length.isdigit():
            return Problem(
                title="Bad request",
                status=400,
                detail="The Content-Length header is not a number of bytes.",
            )
        if int(length) > self.max_body:
            return self._too_large(describe_size(int(length)))
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = self._refusal(scope)
        if problem is not None:
            await problem_response(problem)(scope, receive, send)
            return
        received = 0

        async def bounded() -> Message:
            # Raised inside the route's read of the body; FastAPI passes HTTPException on, and
            # the problem handlers turn it into problem details.
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise HTTPException(
                        413, self._too_large(f"more than {describe_size(self.max_body)}").detail
                    )
            return message

        await self.app(scope, bounded, send)
