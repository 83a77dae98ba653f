"""The outbox and its notifier (fast tier: SQLite, a fake clock, an in-memory HTTP transport
and mail sender): one row per recipient whatever repeats, signed webhooks, back-off, giving up
once, no secret in any error, and a crash between sending and marking that sends again with
the same idempotency key."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from allotment.api.app import Settings, prepare
from allotment.clock import FakeClock
from allotment.config import parse_policy
from allotment.config.models import Policy, SmtpSpec, WebhookSpec
from allotment.controller.notify import Notifier, backoff, sign
from allotment.db.engine import Database
from allotment.db.notifications import GAVE_UP, Delivery, enqueue_alert, recipients
from allotment.db.tables import Notification
from tests.controller.conftest import Crash, Fast

SECRET = b"hook-secret-0123456789"
HOOK = "https://hooks.example.org/services/T0/B0/s3cr3t-path"
ALERT = "budget:7:2026-12-01:1.0"


@dataclass
class Outbox:
    db: Database
    clock: FakeClock
    hook: WebhookSpec
    #: What the fake receiver got, and what it answers (status codes, in turn; then 204).
    requests: list[httpx.Request] = field(default_factory=list)
    answers: list[int | Exception] = field(default_factory=list)
    mails: list[tuple[SmtpSpec, EmailMessage]] = field(default_factory=list)

    def notifier(self, **kwargs: float) -> Notifier:
        def handle(request: httpx.Request) -> httpx.Response:
            self.requests.append(request)
            answer = self.answers.pop(0) if self.answers else 204
            if isinstance(answer, Exception):
                raise answer
            return httpx.Response(answer)

        def send(spec: SmtpSpec, message: EmailMessage) -> None:
            self.mails.append((spec, message))

        return Notifier(
            self.db,
            self.clock,
            transport=httpx.MockTransport(handle),
            send_mail=send,
            **kwargs,  # type: ignore[arg-type]
        )

    async def enqueue(self, emails: list[str], hooks: list[WebhookSpec] | None = None) -> None:
        async with self.db.write() as session:
            enqueue_alert(
                session,
                alert_key=ALERT,
                subject="lab-a has spent its budget",
                text="lab-a has spent 10.00 of its 10.00 credits for December.",
                emails=emails,
                webhooks=[self.hook] if hooks is None else hooks,
                payload={"account": "lab-a", "spent": 10_000_000, "threshold": 1.0},
                now=self.clock.now(),
            )

    async def rows(self) -> list[Notification]:
        async with self.db.read() as session:
            return list((await session.execute(select(Notification))).scalars())


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    secret = tmp_path / "hook-secret"
    secret.write_bytes(SECRET + b"\n")
    policy = parse_policy(
        f"""
notifications:
  smtp: {{host: mail.example.org, port: 2525, sender: allotment@example.org}}
  webhooks:
    - {{url: "{HOOK}", secret_file: {secret}}}
""",
        environ={},
    )
    url = f"sqlite+aiosqlite:///{tmp_path / 'allotment.sqlite'}"
    db = Database(url)
    clock = FakeClock()
    await prepare(db, Settings(database_url=url, data_dir=tmp_path, policy=policy), clock)
    try:
        yield Outbox(db, clock, policy.notifications.webhooks[0])
    finally:
        await db.dispose()


async def test_one_row_per_recipient_whatever_repeats(outbox: Outbox) -> None:
    await outbox.enqueue(["alice@example.org", "bob@example.org", "alice@example.org"])
    await outbox.enqueue(["alice@example.org", "bob@example.org"])  # raised again
    # ... and through a run_write session (the controller's) too.
    await outbox.db.run_write(
        lambda s: enqueue_alert(
            s,
            alert_key=ALERT,
            subject="s",
            text="t",
            emails=["bob@example.org"],
            webhooks=[outbox.hook],
            payload={},
            now=outbox.clock.now(),
        )
    )
    rows = await outbox.rows()
    assert sorted((r.channel, r.target) for r in rows) == [
        ("email", "alice@example.org"),
        ("email", "bob@example.org"),
        ("webhook", HOOK),
    ]
    # The webhook's key names its URL by digest: the path (a secret here) is never in it.
    assert all(r.key.startswith(ALERT + "/") and "s3cr3t" not in r.key for r in rows)


async def test_rows_of_a_rolled_back_transaction_are_not_written(outbox: Outbox) -> None:
    with pytest.raises(RuntimeError):
        async with outbox.db.write() as session:
            enqueue_alert(
                session,
                alert_key=ALERT,
                subject="s",
                text="t",
                emails=["alice@example.org"],
                webhooks=[],
                payload={},
                now=outbox.clock.now(),
            )
            raise RuntimeError("the alert's transaction failed")
    assert await outbox.rows() == []


def test_recipients_from_the_policy_then_the_domain() -> None:
    policy = Policy.model_validate(
        {"users": {"alice": {"email": "a.smith@uni.example"}, "bob": {}}}
    )
    assert recipients(policy, ["alice", "bob", "alice"]) == ["a.smith@uni.example"]
    with_domain = policy.model_copy(
        update={
            "notifications": policy.notifications.model_copy(update={"email_domain": "lab.example"})
        }
    )
    assert recipients(with_domain, ["alice", "bob", "carol"]) == [
        "a.smith@uni.example",
        "bob@lab.example",
        "carol@lab.example",
    ]


async def test_a_webhook_is_signed_and_sent_once(outbox: Outbox) -> None:
    await outbox.enqueue([])
    notifier = outbox.notifier()
    assert await notifier.deliver_due() == 1
    assert await notifier.deliver_due() == 0
    await notifier.close()
    [request] = outbox.requests
    row = (await outbox.rows())[0]
    assert str(request.url) == HOOK
    assert request.headers["Idempotency-Key"] == row.key
    assert request.headers["X-Allotment-Event"] == "budget.alert"
    timestamp = request.headers["X-Allotment-Timestamp"]
    assert int(timestamp) == int(outbox.clock.now().timestamp())
    mac = hmac.new(SECRET, timestamp.encode() + b"." + request.content, hashlib.sha256)
    assert request.headers["X-Allotment-Signature"] == "sha256=" + mac.hexdigest()
    body = json.loads(request.content)
    assert body["event"] == "budget.alert"
    assert body["id"] == row.key
    assert body["alert"] == {"account": "lab-a", "spent": 10_000_000, "threshold": 1.0}
    assert row.sent_at == outbox.clock.now()
    assert row.attempts == 1


def test_the_signature_covers_the_timestamp() -> None:
    body = b'{"event":"budget.alert"}'
    assert sign(SECRET, 100, body) != sign(SECRET, 101, body)
    assert sign(SECRET, 100, body) != sign(b"other", 100, body)


def test_backoff_doubles_up_to_its_cap() -> None:
    assert [backoff(n, 30, 3600) for n in range(1, 10)] == [
        30,
        60,
        120,
        240,
        480,
        960,
        1920,
        3600,
        3600,
    ]
    assert backoff(10_000, 30, 3600) == 3600


async def test_failures_back_off_then_give_up_once(
    outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    await outbox.enqueue([])
    outbox.answers = [500] * 10
    notifier = outbox.notifier(first_backoff=30, max_backoff=100, max_attempts=4)
    waits = []
    with caplog.at_level(logging.INFO, logger="allotment.notify"):
        for _ in range(4):
            before = outbox.clock.now()
            assert await notifier.deliver_due() == 1
            [row] = await outbox.rows()
            waits.append((row.next_attempt - before).total_seconds())
            assert await notifier.deliver_due() == 0  # not due again before its back-off
            outbox.clock.advance(100)
        outbox.clock.advance(10 * 365 * 86400)
        assert await notifier.deliver_due() == 0
    await notifier.close()
    assert waits[:3] == [30, 60, 100]
    [row] = await outbox.rows()
    assert row.sent_at is None
    assert row.attempts == 4
    assert row.next_attempt == GAVE_UP
    assert row.last_error == "gave up after 4 attempt(s): Refused: the receiver answered HTTP 500"
    gave_up = [r for r in caplog.records if "gave up" in r.getMessage()]
    assert len(gave_up) == 1
    assert len(outbox.requests) == 4


async def test_a_late_success_is_marked_sent(outbox: Outbox) -> None:
    await outbox.enqueue([])
    outbox.answers = [503]
    notifier = outbox.notifier()
    await notifier.deliver_due()
    outbox.clock.advance(30)
    await notifier.deliver_due()
    await notifier.close()
    [row] = await outbox.rows()
    assert row.sent_at is not None
    assert row.attempts == 2
    assert row.last_error == ""
    assert [r.headers["Idempotency-Key"] for r in outbox.requests] == [row.key] * 2


async def test_errors_show_no_secret_and_no_url_path(
    outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    await outbox.enqueue([])
    outbox.answers = [httpx.ConnectError(f"cannot connect to {HOOK}")]
    notifier = outbox.notifier()
    with caplog.at_level(logging.DEBUG):
        await notifier.deliver_due()
    await notifier.close()
    [row] = await outbox.rows()
    assert row.last_error == "ConnectError: cannot connect to https://hooks.example.org/…"
    for text in (row.last_error, caplog.text):
        assert "s3cr3t" not in text
        assert SECRET.decode() not in text


async def test_a_crash_between_sending_and_marking_sends_again_with_the_same_key(
    outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    await outbox.enqueue(["alice@example.org"])
    crashed: list[Delivery] = []

    async def die(self: Notifier, row: Delivery) -> None:
        crashed.append(row)
        raise Crash("after sending, before marking")

    with monkeypatch.context() as patch:
        patch.setattr(Notifier, "sent", die)
        with pytest.raises(Crash):
            await outbox.notifier().deliver_due()
        while len(crashed) < 2:  # the e-mail's and the webhook's deliveries both died
            await asyncio.sleep(0.01)
    outbox.clock.advance(1)
    notifier = outbox.notifier()  # the restarted controller's
    assert await notifier.deliver_due() == 2
    await notifier.close()
    first, again = outbox.requests
    assert first.headers["Idempotency-Key"] == again.headers["Idempotency-Key"]
    assert first.content == again.content
    # The timestamp is the resend's own, and signed with it: a receiver's window holds.
    assert first.headers["X-Allotment-Timestamp"] != again.headers["X-Allotment-Timestamp"]
    (_, mail1), (_, mail2) = outbox.mails
    assert mail1["Message-ID"] == mail2["Message-ID"]
    assert all(r.sent_at is not None for r in await outbox.rows())


async def test_the_email_says_what_happened(outbox: Outbox) -> None:
    await outbox.enqueue(["alice@example.org"], hooks=[])
    notifier = outbox.notifier()
    await notifier.deliver_due()
    await notifier.close()
    [(spec, message)] = outbox.mails
    assert (spec.host, spec.port) == ("mail.example.org", 2525)
    assert message["From"] == "allotment@example.org"
    assert message["To"] == "alice@example.org"
    assert message["Subject"] == "lab-a has spent its budget"
    assert message.get_content().strip() == (
        "lab-a has spent 10.00 of its 10.00 credits for December."
    )


async def test_a_channel_gone_from_the_policy_is_given_up(outbox: Outbox, tmp_path: Path) -> None:
    other = WebhookSpec(url="https://elsewhere.example/hook", secret_file=str(tmp_path / "x"))
    await outbox.enqueue([], hooks=[other])
    notifier = outbox.notifier()
    await notifier.deliver_due()
    await notifier.close()
    [row] = await outbox.rows()
    assert row.last_error.startswith("gave up after 1 attempt(s): GiveUp: the webhook is no")
    assert outbox.requests == []


async def test_an_unreadable_secret_is_retried_and_named(outbox: Outbox, tmp_path: Path) -> None:
    (tmp_path / "hook-secret").unlink()
    await outbox.enqueue([])
    notifier = outbox.notifier()
    await notifier.deliver_due()
    await notifier.close()
    [row] = await outbox.rows()
    assert row.next_attempt == outbox.clock.now() + timedelta(seconds=30)
    assert "cannot read the webhook secret_file" in row.last_error
    assert outbox.requests == []


async def test_the_controller_runs_the_notifier(fast: Fast) -> None:
    """The controller's loop delivers what is queued (the fast policy sends no e-mail, so
    the row is given up at once: proof enough that it was tried)."""
    async with fast.controller.db.write() as session:
        enqueue_alert(
            session,
            alert_key=ALERT,
            subject="s",
            text="t",
            emails=["alice@example.org"],
            webhooks=[],
            payload={},
            now=fast.clock.now(),
        )
    fast.controller.notifier.nudge()
    for _ in range(500):
        async with fast.controller.db.read() as session:
            row = (await session.execute(select(Notification))).scalar_one()
        if row.attempts:
            break
        await asyncio.sleep(0.01)
    assert row.last_error == (
        "gave up after 1 attempt(s): GiveUp: the policy in force sends no e-mail "
        "(no notifications.smtp)"
    )
