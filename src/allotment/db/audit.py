"""The audit log: every change to accounts, memberships, shares and budgets, written in the
same transaction as the change itself, so a change is never made without its entry."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from allotment.db.tables import AuditEntry

__all__ = ["record"]


def record(
    session: AsyncSession,
    *,
    actor: str,
    action: str,
    target: str,
    now: datetime,
    account_path: str = "",
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> None:
    """Add an entry to ``session``'s transaction: ``actor`` did ``action`` to ``target``
    (``account_path``: the account it touches, "" for site-wide), ``before`` → ``after``."""
    session.add(
        AuditEntry(
            at=now,
            actor=actor,
            action=action,
            account_path=account_path,
            target=target,
            before=before,
            after=after,
        )
    )
