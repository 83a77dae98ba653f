"""The notifier: delivers the outbox (``db/notifications.py``) by e-mail and signed webhook.

Every ``interval`` (and at once when nudged) it takes the rows that are due, delivers each,
and marks it sent. A failed attempt records its error (never a password, a secret or a
webhook's URL path, which may hold one) and is tried again after a back-off that doubles
from ``first_backoff`` to at most ``max_backoff``; after ``max_attempts`` it gives up, logs
that once, and the row keeps its last error for the administrator.

Delivery is at least once: a crash between sending and marking sends the row again, with
the same ``Idempotency-Key`` (the row's key) and, for e-mail, the same ``Message-ID``, so a
receiver can drop the repeat. Only the controller runs the notifier (one per installation),
so two processes never deliver the same row at once.

A webhook POST carries::

    X-Allotment-Event: budget.alert
    Idempotency-Key: <row key>
    X-Allotment-Timestamp: <Unix seconds when signed>
    X-Allotment-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + raw body)>

Signing the timestamp with the body lets a receiver refuse an old request replayed
(``docs/notifications.md`` has a receiver in Python). Secrets and the SMTP password are read
from their files at each attempt, so a rotated secret applies at once and none is kept.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import smtplib
import ssl
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from allotment.clock import Clock
from allotment.config.models import Policy, SmtpSpec, WebhookSpec
from allotment.db.engine import Database
from allotment.db.notifications import (
    EMAIL,
    EVENT,
    WEBHOOK,
    Delivery,
    due,
    mark_failed,
    mark_sent,
)
from allotment.db.outage import OutageLog, classify
from allotment.db.tables import PolicyVersion

__all__ = ["GiveUp", "Notifier", "SendMail", "backoff", "sign", "signature_headers"]

log = logging.getLogger("allotment.notify")

#: Seconds one webhook POST may take, connecting included.
WEBHOOK_TIMEOUT = 10.0
#: Seconds one SMTP conversation may wait on the server at each step.
SMTP_TIMEOUT = 20.0

#: Sends one message through a server (a seam for tests; ``smtp_send`` in a thread in use).
SendMail = Callable[[SmtpSpec, EmailMessage], None]


class Refused(Exception):
    """The webhook's receiver answered, but not 2xx: try again later."""


class GiveUp(Exception):
    """This row can never be delivered (its channel left the policy): stop trying."""


def backoff(attempts: int, first: float, cap: float) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt: ``first``, doubling, at most
    ``cap``."""
    return float(min(cap, first * 2 ** min(attempts - 1, 32)))


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """``sha256=<hex>``: the HMAC-SHA256 under ``secret`` of ``b"<timestamp>." + body``."""
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def signature_headers(*, secret: bytes, key: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The headers of one webhook POST of ``body``."""
    return {
        "Content-Type": "application/json",
        "X-Allotment-Event": EVENT,
        "Idempotency-Key": key,
        "X-Allotment-Timestamp": str(timestamp),
        "X-Allotment-Signature": sign(secret, timestamp, body),
    }


def _where(url: str) -> str:
    """A URL as logs and errors may show it: scheme and host only (its path may be a secret)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/…"


def _read_secret(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes().strip()
    except OSError as e:
        raise OSError(f"cannot read the {what} {path}: {e.strerror or type(e).__name__}") from None


def smtp_send(spec: SmtpSpec, message: EmailMessage) -> None:
    """Send ``message`` through ``spec``'s server (blocking: run it in a thread)."""
    with smtplib.SMTP(spec.host, spec.port, timeout=SMTP_TIMEOUT) as server:
        if spec.starttls:
            server.starttls(context=ssl.create_default_context())
        if spec.username:
            password = (
                _read_secret(spec.password_file, "SMTP password_file").decode()
                if spec.password_file
                else ""
            )
            server.login(spec.username, password)
        server.send_message(message)


def email_message(spec: SmtpSpec, row: Delivery, now: datetime) -> EmailMessage:
    """The e-mail of ``row``; its ``Message-ID`` comes from the row's key, so a message sent
    again after a crash is the same message."""
    message = EmailMessage()
    message["From"] = spec.sender
    message["To"] = row.target
    message["Subject"] = str(row.payload.get("subject", "Allotment budget alert"))
    message["Date"] = format_datetime(now)
    digest = hashlib.sha256(row.key.encode()).hexdigest()[:40]
    domain = spec.sender.rpartition("@")[2] or "allotment"
    message["Message-ID"] = f"<{digest}@{domain}>"
    message["X-Allotment-Event"] = EVENT
    message.set_content(str(row.payload.get("text", "")))
    return message


def _error(e: BaseException, url: str | None = None) -> str:
    """What went wrong, for the row and the log: the exception's kind and text, with a
    webhook's URL cut to its host."""
    text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    if url:
        text = text.replace(url, _where(url))
    return text[:500]


class Notifier:
    """The outbox's delivery loop (see the module's docstring)."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        interval: float = 5.0,
        first_backoff: float = 30.0,
        max_backoff: float = 3600.0,
        max_attempts: int = 12,
        batch: int = 50,
        parallel: int = 4,
        transport: httpx.AsyncBaseTransport | None = None,
        send_mail: SendMail = smtp_send,
    ) -> None:
        self.db = db
        self.clock = clock
        self.interval = interval
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        self.max_attempts = max_attempts
        self.batch = batch
        self.send_mail = send_mail
        self._transport = transport
        self._http: httpx.AsyncClient | None = None
        self._wake = asyncio.Event()
        #: Deliveries in flight at once: a mail server limits connections per client.
        self._parallel = asyncio.Semaphore(parallel)
        self._policy: tuple[int, Policy] | None = None
        self.outage = OutageLog("notifier", "deliveries waited", log)

    def nudge(self) -> None:
        """Alerts were queued: deliver them now rather than at the next interval."""
        self._wake.set()

    async def run(self) -> None:
        try:
            while True:
                try:
                    while await self.deliver_due() >= self.batch:
                        pass
                    self.outage.recovered()
                except Exception as e:
                    if (outage := classify(e)) is None:
                        log.exception("delivering notifications failed; trying again")
                    else:
                        self.outage.failed(outage)
                try:
                    await asyncio.wait_for(self._wake.wait(), self.interval)
                except TimeoutError:
                    pass
                self._wake.clear()
        finally:
            await self.close()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def _read(self, session: Session) -> tuple[Policy | None, list[Delivery]]:
        rows = due(session, self.clock.now(), self.batch)
        if not rows:
            return None, rows
        version = session.execute(
            select(PolicyVersion.id).order_by(PolicyVersion.id.desc()).limit(1)
        ).scalar_one_or_none()
        if version is None:
            return None, rows
        if self._policy is None or self._policy[0] != version:
            document = session.execute(
                select(PolicyVersion.document).where(PolicyVersion.id == version)
            ).scalar_one()
            self._policy = (version, Policy.model_validate(document))
        return self._policy[1], rows

    async def deliver_due(self) -> int:
        """One pass: deliver every row due now (at most ``batch``); how many were tried."""
        policy, rows = await self.db.run_read(self._read)
        if rows:
            await asyncio.gather(*(self._limited(policy, row) for row in rows))
        return len(rows)

    async def _limited(self, policy: Policy | None, row: Delivery) -> None:
        async with self._parallel:
            await self._attempt(policy, row)

    async def _attempt(self, policy: Policy | None, row: Delivery) -> None:
        url = row.target if row.channel == WEBHOOK else None
        try:
            if row.channel == EMAIL:
                await self._email(policy, row)
            elif row.channel == WEBHOOK:
                await self._webhook(policy, row)
            else:
                raise GiveUp(f"unknown channel {row.channel!r}")
        except Exception as e:
            await self._failed(row, _error(e, url), give_up=isinstance(e, GiveUp))
            return
        await self.sent(row)

    async def sent(self, row: Delivery) -> None:
        """Mark ``row`` sent. A crash before this returns sends it again: at least once."""
        now = self.clock.now()
        await self.db.run_write(lambda s: mark_sent(s, row.id, now))

    async def _failed(self, row: Delivery, error: str, *, give_up: bool) -> None:
        attempts = row.attempts + 1
        where = _where(row.target) if row.channel == WEBHOOK else row.target
        next_attempt: datetime | None = None
        if give_up or attempts >= self.max_attempts:
            log.warning(
                "gave up delivering %s to %s after %d attempt(s): %s",
                row.key.partition("/")[0],
                where,
                attempts,
                error,
            )
            error = f"gave up after {attempts} attempt(s): {error}"
        else:
            wait = backoff(attempts, self.first_backoff, self.max_backoff)
            next_attempt = self.clock.now() + timedelta(seconds=wait)
            log.info("delivering to %s failed (attempt %d): %s", where, attempts, error)
        await self.db.run_write(
            lambda s: mark_failed(s, row.id, error=error, next_attempt=next_attempt)
        )

    async def _email(self, policy: Policy | None, row: Delivery) -> None:
        smtp = policy.notifications.smtp if policy is not None else None
        if smtp is None:
            raise GiveUp("the policy in force sends no e-mail (no notifications.smtp)")
        message = email_message(smtp, row, self.clock.now())
        await asyncio.to_thread(self.send_mail, smtp, message)

    async def _webhook(self, policy: Policy | None, row: Delivery) -> None:
        hook = _hook(policy.notifications.webhooks if policy is not None else [], row.target)
        if hook is None:
            raise GiveUp("the webhook is no longer in the policy in force")
        secret = _read_secret(hook.secret_file, "webhook secret_file")
        body = json.dumps(row.payload.get("body", {}), separators=(",", ":")).encode()
        timestamp = int(self.clock.now().timestamp())
        headers = signature_headers(secret=secret, key=row.key, timestamp=timestamp, body=body)
        response = await self._client().post(hook.url, content=body, headers=headers)
        if not 200 <= response.status_code < 300:
            raise Refused(f"the receiver answered HTTP {response.status_code}")

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(
                transport=self._transport,
                timeout=WEBHOOK_TIMEOUT,
                follow_redirects=False,
                headers={"User-Agent": "allotment-notifier"},
            )
        return self._http


def _hook(hooks: Sequence[WebhookSpec], url: str) -> WebhookSpec | None:
    return next((h for h in hooks if h.url == url), None)
