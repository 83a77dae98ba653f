"""Every table pages: by a cursor (an id) where rows come from the database newest first,
by page number where a table is computed whole (a leaderboard, the fair-share tree)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["PAGE", "Slice", "cursor", "page_number", "slice_of"]

T = TypeVar("T")

#: Rows per page of every table.
PAGE = 25


@dataclass(frozen=True)
class Slice(Generic[T]):
    items: Sequence[T]
    page: int
    pages: int

    @property
    def previous(self) -> int | None:
        return self.page - 1 if self.page > 1 else None

    @property
    def next(self) -> int | None:
        return self.page + 1 if self.page < self.pages else None


def page_number(raw: str | None) -> int:
    try:
        return max(1, min(int(raw or 1), 1_000_000))
    except ValueError:
        return 1


def slice_of(items: Sequence[T], page: int, size: int = PAGE) -> Slice[T]:
    pages = max(1, -(-len(items) // size))
    page = min(page, pages)
    return Slice(items[(page - 1) * size : page * size], page, pages)


def cursor(raw: str | None) -> int | None:
    """An id cursor from the query; None for the first page or a malformed one."""
    try:
        value = int(raw) if raw else None
    except ValueError:
        return None
    return value if value is not None and 0 < value < 2**62 else None
