"""The exception tree.

::

    AllotmentError
    ├── ConfigError            a policy file is wrong (carries file, line, key)
    └── PublicError            safe to show to a researcher as it is
        ├── NotFound           404: it does not exist, or you may not see it
        ├── Forbidden          403: you are known but may not do this
        ├── Unauthenticated    401: no valid token
        ├── Conflict           409: the state of the world forbids it
        └── InvalidRequest     422: the request cannot be carried out as asked

A ``PublicError`` message is written for researchers: it says what happened and, where it
can, what to do instead. Nothing in it may leak another tenant's data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "AllotmentError",
    "ConfigError",
    "ConfigProblem",
    "Conflict",
    "Forbidden",
    "InvalidRequest",
    "NotFound",
    "PublicError",
    "Unauthenticated",
]


class AllotmentError(Exception):
    """Base of every error Allotment raises on purpose."""


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with a policy file."""

    #: File the problem is in.
    file: str
    #: 1-based line, or 0 when the problem is not tied to a line (an empty file).
    line: int
    #: Dotted key path, e.g. ``accounts.lab-a.parent``; empty for the whole file.
    key: str
    #: What is wrong.
    message: str
    #: How to fix it; empty when the message says it already.
    hint: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        key = f" {self.key}:" if self.key else ""
        text = f"{where}:{key} {self.message}"
        return f"{text}\n    fix: {self.hint}" if self.hint else text


@dataclass
class ConfigError(AllotmentError):
    """A policy file has one or more problems; all of them are listed."""

    problems: list[ConfigProblem] = field(default_factory=list)

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


class PublicError(AllotmentError):
    """An error whose message a researcher may read."""

    status: int = 400
    title: str = "Bad request"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(PublicError):
    status = 404
    title = "Not found"


class Forbidden(PublicError):
    status = 403
    title = "Forbidden"


class Unauthenticated(PublicError):
    status = 401
    title = "Not authenticated"


class Conflict(PublicError):
    status = 409
    title = "Conflict"


class InvalidRequest(PublicError):
    status = 422
    title = "Invalid request"
