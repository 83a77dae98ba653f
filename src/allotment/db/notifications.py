"""The notifications outbox: budget alerts written in the transaction that raises them, and
delivered later, by e-mail and signed webhook, by the notifier loop (``controller/notify.py``).

Writing the outbox row beside the alert (instead of sending from the budget watch) means a
crash never loses an alert nor sends one that was rolled back: the alert and its deliveries
commit together. Each row's ``key`` is the alert's key and the recipient, unique, so an alert
raised again (a restarted watch, two controllers racing) adds nothing: ``ON CONFLICT DO
NOTHING``. The same key is the webhook's ``Idempotency-Key``: delivery is at least once (a
crash between sending and marking sends again) and the receiver drops repeats by that key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from allotment.config.models import Policy, WebhookSpec
from allotment.db.tables import Notification

__all__ = [
    "EMAIL",
    "EVENT",
    "GAVE_UP",
    "WEBHOOK",
    "Delivery",
    "due",
    "enqueue_alert",
    "mark_failed",
    "mark_sent",
    "recipients",
]

EMAIL = "email"
WEBHOOK = "webhook"
#: The webhook's ``X-Allotment-Event`` and the body's ``event``.
EVENT = "budget.alert"
#: Longest ``notifications.key`` (the column's size).
KEY_LIMIT = 255
_PENDING = "allotment.notifications.pending"
#: ``next_attempt`` of a row given up on: unsent, with its last error, never due again.
GAVE_UP = datetime(9999, 1, 1, tzinfo=UTC)


def recipients(policy: Policy, users: Iterable[str]) -> list[str]:
    """The e-mail addresses of ``users``, in order, without repeats: each user's
    ``users.<name>.email``, else ``<name>@<notifications.email_domain>``, else none.

    The hub may know an address, but it tells Allotment none (its OAuth gives a name, no
    e-mail), so a user with neither gets no e-mail; the meter and the dashboard still show
    the alert.
    """
    domain = policy.notifications.email_domain
    found: list[str] = []
    for user in users:
        spec = policy.users.get(user)
        address = spec.email if spec is not None and spec.email else None
        if address is None and domain:
            address = f"{user}@{domain}"
        if address is not None and address not in found:
            found.append(address)
    return found


def _key(alert_key: str, channel: str, target: str) -> str:
    """The row's key: the alert's and the recipient's. A webhook is named by its URL's digest,
    never the URL: many (Slack's, Teams') hold their secret in the path, and the key is sent
    and shown. A long address is named by its digest too, to fit the column."""
    key = f"{alert_key}/{channel}:{target}"
    if channel == EMAIL and len(key) <= KEY_LIMIT:
        return key
    digest = hashlib.sha256(f"{channel}:{target}".encode()).hexdigest()[:32]
    return f"{alert_key[: KEY_LIMIT - len(channel) - 34]}/{channel}:{digest}"


def _rows(
    *,
    alert_key: str,
    subject: str,
    text: str,
    emails: Sequence[str],
    webhooks: Sequence[WebhookSpec],
    payload: dict[str, Any],
    now: datetime,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    common = {"attempts": 0, "next_attempt": now, "last_error": "", "created_at": now}
    for address in dict.fromkeys(emails):
        rows.append(
            {
                "key": _key(alert_key, EMAIL, address),
                "channel": EMAIL,
                "target": address,
                "payload": {"subject": subject, "text": text},
                **common,
            }
        )
    for hook in {h.url: h for h in webhooks}.values():
        key = _key(alert_key, WEBHOOK, hook.url)
        body = {"event": EVENT, "id": key, "subject": subject, "text": text, "alert": payload}
        rows.append(
            {
                "key": key,
                "channel": WEBHOOK,
                "target": hook.url,
                # No secret: the policy's secret_file for this URL is read at send time.
                "payload": {"body": body},
                **common,
            }
        )
    return rows


def _insert(session: Session, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    session.execute(
        insert(Notification).values(rows).on_conflict_do_nothing(index_elements=["key"])
    )


def _insert_pending(session: Session) -> None:
    rows = session.info.pop(_PENDING, [])
    _insert(session, rows)


def _drop_pending(session: Session) -> None:
    session.info.pop(_PENDING, None)


def enqueue_alert(
    session: AsyncSession | Session,
    *,
    alert_key: str,
    subject: str,
    text: str,
    emails: Sequence[str],
    webhooks: Sequence[WebhookSpec],
    payload: dict[str, Any],
    now: datetime,
) -> None:
    """Add to ``session``'s transaction one outbox row per recipient of an alert: each
    address of ``emails`` gets ``subject`` and ``text``; each of ``webhooks`` gets a signed
    POST of ``{"event": "budget.alert", "id", "subject", "text", "alert": payload}``.

    ``alert_key`` names the alert (e.g. ``budget:<id>:<period start>:<threshold>``); a row
    whose key (alert key + recipient) exists already is skipped, so raising an alert twice
    delivers it once. The rows are due at ``now``.

    A synchronous session (``Database.run_write``'s) writes them at once; an
    ``AsyncSession`` (which cannot run SQL from a plain function) writes them just before
    its transaction commits, in that commit.
    """
    rows = _rows(
        alert_key=alert_key,
        subject=subject,
        text=text,
        emails=emails,
        webhooks=webhooks,
        payload=payload,
        now=now,
    )
    if isinstance(session, Session):
        _insert(session, rows)
        return
    sync = session.sync_session
    pending: list[dict[str, Any]] | None = sync.info.get(_PENDING)
    if pending is None:
        sync.info[_PENDING] = pending = []
        event.listen(sync, "before_commit", _insert_pending, once=True)
        event.listen(sync, "after_rollback", _drop_pending, once=True)
    pending.extend(rows)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One outbox row due to be delivered."""

    id: int
    key: str
    channel: str
    target: str
    payload: dict[str, Any]
    attempts: int


def due(session: Session, now: datetime, limit: int = 100) -> list[Delivery]:
    """Rows not yet sent whose next attempt is at or before ``now``, oldest first."""
    rows = session.execute(
        select(Notification)
        .where(Notification.sent_at.is_(None), Notification.next_attempt <= now)
        .order_by(Notification.next_attempt, Notification.id)
        .limit(limit)
    ).scalars()
    return [
        Delivery(
            id=r.id,
            key=r.key,
            channel=r.channel,
            target=r.target,
            payload=dict(r.payload),
            attempts=r.attempts,
        )
        for r in rows
    ]


def mark_sent(session: Session, row_id: int, now: datetime) -> None:
    """Row ``row_id`` was delivered at ``now``: it is never tried again."""
    session.execute(
        update(Notification)
        .where(Notification.id == row_id, Notification.sent_at.is_(None))
        .values(sent_at=now, attempts=Notification.attempts + 1, last_error="")
    )


def mark_failed(
    session: Session, row_id: int, *, error: str, next_attempt: datetime | None
) -> None:
    """Row ``row_id``'s attempt failed with ``error``; it is tried again at ``next_attempt``
    (None: never again, it gave up; the row stays unsent with its last error)."""
    values: dict[str, Any] = {"attempts": Notification.attempts + 1, "last_error": error[:2000]}
    values["next_attempt"] = next_attempt if next_attempt is not None else GAVE_UP
    session.execute(
        update(Notification)
        .where(Notification.id == row_id, Notification.sent_at.is_(None))
        .values(**values)
    )
