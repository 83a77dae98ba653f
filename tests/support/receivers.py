"""Real receivers of budget alerts, run by a test: an SMTP server (``aiosmtpd``) and an HTTP
server that checks each webhook's signature as a site's receiver would.

Both run on threads of their own on 127.0.0.1, so a service in another process reaches them
as it would a site's mail server and webhook endpoint.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from tests.support.hub import free_port

__all__ = ["MailServer", "Webhook", "WebhookReceiver", "mail_server", "webhook_receiver"]


def _wait(what: Callable[[], bool], seconds: float, describe: Callable[[], str]) -> None:
    deadline = time.monotonic() + seconds
    while not what():
        if time.monotonic() > deadline:
            raise AssertionError(describe())
        time.sleep(0.05)


@dataclass
class MailServer:
    """An SMTP server; ``messages`` are what it accepted, in order, with their envelope."""

    host: str
    port: int
    messages: list[tuple[list[str], Message]] = field(default_factory=list)
    #: Logins tried, as (username, password): a test checks the password file was read.
    logins: list[tuple[str, str]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:  # noqa: N802
        content = envelope.original_content or b""
        self.messages.append((list(envelope.rcpt_tos), message_from_bytes(content)))
        return "250 OK"

    def wait_for(self, count: int, seconds: float = 30.0) -> list[tuple[list[str], Message]]:
        """The messages, once ``count`` have arrived."""
        _wait(
            lambda: len(self.messages) >= count,
            seconds,
            lambda: f"{count} e-mail(s) expected, {len(self.messages)} received",
        )
        return list(self.messages)


@contextmanager
def mail_server(
    *, username: str | None = None, password: str | None = None
) -> Iterator[MailServer]:
    """A running SMTP server on a free port; with ``username``, it offers AUTH (over plain
    text: tests only) and refuses any other login."""
    box = MailServer("127.0.0.1", 0)

    def authenticate(
        server: Any, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        given = (auth_data.login.decode(), auth_data.password.decode())
        box.logins.append(given)
        # handled=False: aiosmtpd answers a refusal with 535 (handled, it would say nothing).
        return AuthResult(success=given == (username, password), handled=False)

    kwargs: dict[str, Any] = {}
    if username is not None:
        kwargs = {
            "authenticator": authenticate,
            # Optional, so aiosmtpd warns not of AUTH without TLS: a wrong login still fails.
            "auth_required": False,
            "auth_require_tls": False,
        }
    box.port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=box.port, **kwargs)
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


@dataclass(frozen=True)
class Webhook:
    """One POST the receiver got."""

    headers: dict[str, str]
    body: bytes
    #: Its signature verified with the receiver's secret, and its timestamp fresh.
    verified: bool
    status: int

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    """An HTTP endpoint verifying ``X-Allotment-Signature`` with ``secret`` (as the receiver in
    docs/notifications.md does): 204 when it holds, 401 when not, ``fail_next`` 500s first."""

    secret: bytes
    port: int = 0
    received: list[Webhook] = field(default_factory=list)
    fail_next: int = 0
    #: Oldest timestamp accepted, in seconds before now (replay protection).
    tolerance: float = 300.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/allotment/s3cr3t-path"

    def verify(self, headers: dict[str, str], body: bytes) -> bool:
        timestamp = headers.get("x-allotment-timestamp", "")
        signature = headers.get("x-allotment-signature", "")
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > self.tolerance:
            return False
        mac = hmac.new(self.secret, timestamp.encode() + b"." + body, hashlib.sha256)
        return hmac.compare_digest(signature, "sha256=" + mac.hexdigest())

    def accepted(self) -> list[Webhook]:
        return [w for w in self.received if w.status == 204]

    def wait_for(self, count: int, seconds: float = 30.0) -> list[Webhook]:
        """The accepted POSTs, once ``count`` have arrived."""
        _wait(
            lambda: len(self.accepted()) >= count,
            seconds,
            lambda: f"{count} webhook(s) expected, got {self.received}",
        )
        return self.accepted()


@contextmanager
def webhook_receiver(secret: bytes) -> Iterator[WebhookReceiver]:
    """A running :class:`WebhookReceiver` on a free port."""
    receiver = WebhookReceiver(secret)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            verified = receiver.verify(headers, body)
            with lock:
                if receiver.fail_next > 0:
                    receiver.fail_next -= 1
                    status = 500
                else:
                    status = 204 if verified else 401
                receiver.received.append(Webhook(headers, body, verified, status))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, name="webhook-receiver", daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
