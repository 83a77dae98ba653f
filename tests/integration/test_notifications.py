"""Budget alerts delivered for real, on both databases: an e-mail through a real SMTP server
(with a login whose password comes from its file) and a webhook to a real HTTP receiver that
verifies the signature, and refuses a POST signed with another secret."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from allotment.api.app import Settings, prepare
from allotment.clock import SystemClock
from allotment.config import parse_policy
from allotment.config.models import Policy
from allotment.controller.notify import Notifier
from allotment.db.engine import Database
from allotment.db.notifications import enqueue_alert
from allotment.db.tables import Notification
from tests.support.receivers import MailServer, WebhookReceiver, mail_server, webhook_receiver

SECRET = b"0123456789abcdef-shared"
PASSWORD = "mail-pass-never-logged"


@dataclass
class Site:
    db: Database
    policy: Policy
    mail: MailServer
    hook: WebhookReceiver

    async def alert(self, key: str = "budget:1:2026-12-01:1.0") -> None:
        """Queue an alert to two addresses and the policy's webhook."""
        async with self.db.write() as session:
            enqueue_alert(
                session,
                alert_key=key,
                subject="[Allotment] lab-a has spent its budget for December",
                text="lab-a has spent 10.00 of its 10.00 credits for December.",
                emails=["alice@example.org", "dean@example.org"],
                webhooks=self.policy.notifications.webhooks,
                payload={"account": "lab-a", "threshold": 1.0},
                now=SystemClock().now(),
            )

    async def rows(self) -> list[Notification]:
        async with self.db.read() as session:
            found = await session.execute(select(Notification).order_by(Notification.id))
            return list(found.scalars())


@pytest.fixture
async def site(database_url: str, tmp_path: Path) -> AsyncIterator[Site]:
    secret_file = tmp_path / "hook-secret"
    secret_file.write_bytes(SECRET)
    password_file = tmp_path / "smtp-password"
    password_file.write_text(PASSWORD + "\n")
    with (
        mail_server(username="allotment", password=PASSWORD) as mail,
        webhook_receiver(SECRET) as hook,
    ):
        policy = parse_policy(
            f"""
notifications:
  smtp:
    host: 127.0.0.1
    port: {mail.port}
    sender: allotment@example.org
    username: allotment
    password_file: {password_file}
  webhooks:
    - {{url: "{hook.url}", secret_file: {secret_file}}}
""",
            environ={},
        )
        db = Database(database_url)
        await prepare(
            db,
            Settings(database_url=database_url, data_dir=tmp_path / "data", policy=policy),
            SystemClock(),
        )
        try:
            yield Site(db, policy, mail, hook)
        finally:
            await db.dispose()


async def test_an_alert_arrives_by_email_and_signed_webhook(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    await site.alert()
    await site.alert()  # raised again: delivered once
    notifier = Notifier(site.db, SystemClock())
    try:
        assert await notifier.deliver_due() == 3
        assert await notifier.deliver_due() == 0
    finally:
        await notifier.close()
    mails = site.mail.wait_for(2)
    assert sorted(to for (to,), _ in mails) == ["alice@example.org", "dean@example.org"]
    for _, message in mails:
        assert message["From"] == "allotment@example.org"
        assert message["Subject"] == "[Allotment] lab-a has spent its budget for December"
        assert "10.00 of its 10.00 credits" in message.get_payload()
    assert site.mail.logins == [("allotment", PASSWORD)] * 2
    [hook] = site.hook.wait_for(1)
    assert hook.verified
    assert hook.headers["x-allotment-event"] == "budget.alert"
    assert hook.json()["alert"] == {"account": "lab-a", "threshold": 1.0}
    rows = await site.rows()
    assert hook.headers["idempotency-key"] == rows[-1].key
    assert all(r.sent_at is not None and r.last_error == "" for r in rows)
    assert PASSWORD not in caplog.text


async def test_a_webhook_signed_with_another_secret_is_refused_and_retried(
    site: Site, tmp_path: Path
) -> None:
    (tmp_path / "hook-secret").write_bytes(b"not-the-receivers-secret")
    await site.alert()
    notifier = Notifier(site.db, SystemClock())
    try:
        await notifier.deliver_due()
    finally:
        await notifier.close()
    [refused] = site.hook.received
    assert (refused.status, refused.verified) == (401, False)
    webhook = [r for r in await site.rows() if r.channel == "webhook"][0]
    assert webhook.sent_at is None
    assert webhook.attempts == 1
    assert webhook.last_error == "Refused: the receiver answered HTTP 401"
    assert "s3cr3t-path" not in webhook.last_error


async def test_a_wrong_smtp_password_is_retried_and_not_shown(
    site: Site, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "smtp-password").write_text("wrong-password-also-secret")
    await site.alert()
    notifier = Notifier(site.db, SystemClock())
    try:
        await notifier.deliver_due()
    finally:
        await notifier.close()
    assert site.mail.messages == []
    emails = [r for r in await site.rows() if r.channel == "email"]
    assert all(r.sent_at is None and r.attempts == 1 for r in emails)
    assert all(r.last_error.startswith("SMTPAuthenticationError: (535") for r in emails)
    for text in [caplog.text, *(r.last_error for r in emails)]:
        assert "wrong-password-also-secret" not in text
