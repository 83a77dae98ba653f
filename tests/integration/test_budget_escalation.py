"""A spent budget escalates, end to end, with real processes on both databases: a real
`allot serve` charging a real job (run as alice, in its control groups) every second; an SMTP
server and a webhook receiver started by the test.

dean manages inst; alice and bob work in inst/lab, whose budget on pool ``box`` is large
enough for a one-hour job. While alice's job runs, dean cuts lab's budget to a few credits
more than it has spent (a budget set over running work; a policy budget alone could never be
overspent, since work is only admitted when its cost up to its maximum runtime fits). The
job spends it within seconds, then:

- the alert arrives by e-mail (to dean, the manager, and alice, whose job runs) and by
  webhook, whose signature the receiver verifies;
- bob's new job is held with the reason, naming dean;
- alice's job is warned, then stopped after the grace (or, where the budget says so,
  stepped down to the cheaper profile and left running);
- dean raises the budget, and bob's job runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from tests.backends.conftest import ROOT
from tests.support.hub import Hub, free_port
from tests.support.jobs import JobService, ended, job_service, wait_for, workload
from tests.support.receivers import MailServer, WebhookReceiver, mail_server, webhook_receiver

pytestmark = [
    pytest.mark.jupyterhub,
    pytest.mark.skipif(not ROOT, reason="runs workloads as other POSIX accounts: needs root"),
]

SECRET = b"escalation-webhook-secret"
#: 1 credit per CPU-second: a one-CPU job spends a credit a second, an hour 3,600.
POLICY = """\
accounts:
  inst:
    managers: [dean]
  lab:
    parent: inst
    members: [alice, bob]
users:
  alice: {{email: alice@example.org}}
pools:
  box:
    backend: local
    nodes: [{{name: localhost, cpus: 2, memory: 4G}}]
    rates: {{cpu: 3600}}
profiles:
  small:
    pool: box
    size: {{cpus: 1, memory: 128M}}
    max_runtime: 1h
  cheap:
    pool: box
    size: {{cpus: 0.1, memory: 128M}}
    priority: -100
allocations:
  - account: lab
    pool: box
    budget: {{amount: 100000, period: day, alerts: [0.5], grace: 3s}}
accounting: {{interval: 1s}}
notifications:
  email_domain: example.org
  smtp: {{host: 127.0.0.1, port: {smtp_port}, sender: allotment@example.org}}
  webhooks:
    - {{url: "{webhook}", secret_file: {secret_file}}}
scheduling:
  stop_grace: 2s
  interval: 1s
"""


@dataclass
class Site:
    service: JobService
    mail: MailServer
    hook: WebhookReceiver
    alice: str
    bob: str
    dean: str

    def submit(self, token: str, profile: str = "small") -> int:
        with self.service.client(token) as c:
            r = c.post(
                "workloads",
                json={"profile": profile, "account": "inst/lab", "command": ["sleep", "600"]},
            )
        assert r.status_code == 201, r.text
        return int(r.json()["id"])

    def budget(self) -> dict[str, Any]:
        with self.service.client(self.dean) as c:
            r = c.get("budgets", params={"account": "inst/lab"})
        assert r.status_code == 200, r.text
        (found,) = [b for b in r.json()["items"] if b["account"] == "inst/lab"]
        return dict(found)

    def set_budget(self, amount: float, **spec: Any) -> dict[str, Any]:
        """dean, as inst's manager, sets lab's budget on ``box``."""
        body = {"amount": amount, "period": "day", "alerts": [0.5], "grace": "3s", **spec}
        with self.service.client(self.dean) as c:
            r = c.put("accounts/inst/lab/budget", params={"pool": "box"}, json=body)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def cancel(self, token: str, wid: int) -> None:
        with self.service.client(token) as c:
            c.post(f"workloads/{wid}/cancel")
        ended(self.service, token, wid)


@pytest.fixture
def site(database_url: str, tmp_path: Path, hub: Hub) -> Iterator[Site]:
    secret_file = tmp_path / "webhook-secret"
    secret_file.write_bytes(SECRET)
    with mail_server() as mail, webhook_receiver(SECRET) as hook:
        policy = tmp_path / "policy.yaml"
        policy.write_text(
            POLICY.format(smtp_port=mail.port, webhook=hook.url, secret_file=secret_file)
        )
        with job_service(
            free_port(), tmp_path / "data", database_url, hub.api_url, policy, start_within=120
        ) as service:
            yield Site(service, mail, hook, hub.token("alice"), hub.token("bob"), hub.token("dean"))


def _running(site: Site, wid: int) -> dict[str, Any]:
    return dict(
        wait_for(
            lambda: (w := workload(site.service, site.alice, wid))["status"] == "running" and w,
            60,
            what=f"workload {wid} to run",
        )
    )


def _spend_the_budget(site: Site, **spec: Any) -> int:
    """Start alice's job, then cut lab's budget to 3 credits more than spent: the job spends
    it in about three seconds. Its id."""
    wid = site.submit(site.alice)
    _running(site, wid)
    spent = wait_for(lambda: site.budget()["spent"], 30, what="the meter to charge the job")
    cut = site.set_budget(round(spent + 3, 2), **spec)
    assert not cut["blocked"]
    wait_for(lambda: site.budget()["blocked"], 30, what="the job to spend the budget")
    return wid


def _alert_email(site: Site) -> list[tuple[list[str], Message]]:
    """The e-mails of the alert that the budget is spent, once both arrived."""

    def full() -> list[tuple[list[str], Message]]:
        return [(to, m) for to, m in site.mail.messages if "New work is held" in _text(m)]

    return list(wait_for(lambda: len(full()) >= 2 and full(), 60, what="the alert e-mails"))


def _text(message: Message) -> str:
    payload = message.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode()


def _check_alerts(site: Site, then: str) -> None:
    mails = _alert_email(site)
    assert sorted(to for (to,), _ in mails) == ["alice@example.org", "dean@example.org"]
    _, message = mails[0]
    assert message["From"] == "allotment@example.org"
    # Spent by far: the job ran on while the cut was written (the fraction, e.g. 1713%).
    assert message["Subject"].startswith("Budget of inst/lab on pool 'box': ")
    assert message["Subject"].endswith(f"% spent for {_today()}")
    text = _text(message)
    assert "inst/lab has spent" in text
    assert "ask dean (manager) to raise it" in text
    assert f"New work is held; running work is {then} after 3 s." in text
    # The same alert by webhook, signed: the receiver verified it.
    hooks = wait_for(
        lambda: [w for w in site.hook.accepted() if w.json()["alert"]["threshold"] == 1.0],
        60,
        what="the alert's webhook",
    )
    assert hooks[0].verified
    body = hooks[0].json()
    assert body["event"] == "budget.alert"
    assert body["id"] == hooks[0].headers["idempotency-key"]
    assert body["alert"]["account"] == "inst/lab"
    assert body["alert"]["pool"] == "box"
    assert body["alert"]["managers"] == ["dean"]
    assert all(w.status == 204 for w in site.hook.received), "every POST was signed right"


def _held(site: Site) -> int:
    """bob's new job, once held by the spent budget."""
    wid = site.submit(site.bob)
    w = wait_for(
        lambda: "has spent" in str((w := workload(site.service, site.bob, wid))["reason"]) and w,
        30,
        what="bob's job to be held",
    )
    assert w["status"] == "pending"
    assert str(w["reason"]).startswith("inst/lab has spent ")
    assert str(w["reason"]).endswith(
        f"credits on pool 'box' for {_today()}; ask dean (manager) to raise it"
    )
    return wid


def _today() -> str:
    """Today as the reason names the budget's period ("2 December"), in the site's zone (UTC)."""
    now = datetime.now(UTC)
    return f"{now.day} {now:%B}"


def _released(site: Site, held: int) -> None:
    raised = site.set_budget(100000)
    assert not raised["blocked"]
    wait_for(
        lambda: workload(site.service, site.bob, held)["status"] == "running",
        60,
        what="the raised budget to release bob's job",
    )


def test_a_spent_budget_alerts_holds_new_work_and_stops_running_work_after_the_grace(
    site: Site,
) -> None:
    wid = _spend_the_budget(site)
    seen: list[Any] = []

    def look() -> bool:
        w = workload(site.service, site.alice, wid)
        if not seen or seen[-1] != (w["status"], w["reason"]):
            seen.append((w["status"], w["reason"]))
        return "will be stopped" in str(w["reason"])

    try:
        warned = wait_for(look, 90, what="the running job to be warned")
    except AssertionError:
        raise AssertionError(f"{seen} {site.budget()}") from None
    assert warned
    warned_at = datetime.now(UTC)
    assert workload(site.service, site.alice, wid)["status"] == "running"
    held = _held(site)
    _check_alerts(site, "stopped")
    w = ended(site.service, site.alice, wid, 60)
    assert w["status"] == "stopped"
    # Stopped after the 3 s grace from the warning (seen within a tenth of a second of it).
    ended_at = datetime.fromisoformat(str(w["ended_at"]))
    assert (ended_at - warned_at).total_seconds() > 2.5
    assert str(w["reason"]).startswith("stopped: inst/lab has spent ")
    _released(site, held)
    site.cancel(site.bob, held)


def test_a_spent_budget_with_step_down_leaves_running_work_running_on_the_cheaper_profile(
    site: Site,
) -> None:
    wid = _spend_the_budget(site, step_down="cheap")
    w = wait_for(
        lambda: (w := workload(site.service, site.alice, wid))["profile"] == "cheap" and w,
        60,
        what="the running job to step down",
    )
    assert w["status"] == "running"
    assert str(w["reason"]).startswith("stepped down to profile 'cheap': inst/lab has spent ")
    held = _held(site)
    _check_alerts(site, "stepped down to profile 'cheap'")
    time.sleep(3)  # well past the grace: still running, not restarted
    again = workload(site.service, site.alice, wid)
    assert (again["status"], again["profile"]) == ("running", "cheap")
    assert again["started_at"] == w["started_at"]
    _released(site, held)
    site.cancel(site.alice, wid)
    site.cancel(site.bob, held)
