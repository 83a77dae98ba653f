"""Delegated administration end to end: a real `allot serve` running jobs as POSIX users, the
real `allot` CLI, tokens from a real JupyterHub. A lab manager creates a project under her lab
and adds a member; he submits to it; it runs as his account, is charged to the project, and
the audit log tells who did what.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backends.conftest import ROOT
from tests.support.hub import Hub, free_port
from tests.support.jobs import JobService, ended, job_service, wait_for

pytestmark = [
    pytest.mark.jupyterhub,
    pytest.mark.skipif(not ROOT, reason="runs workloads as other POSIX accounts: needs root"),
]

POLICY = """\
accounts:
  lab:
    managers: [alice]
    members: [carol]
pools:
  box:
    backend: local
    nodes: [{name: localhost, cpus: 2, memory: 4G}]
    rates: {cpu: 3.6, memory: 0}
profiles:
  small:
    pool: box
    size: {cpus: 1, memory: 256M}
    max_runtime: 1h
scheduling: {stop_grace: 2s, interval: 1s}
accounting: {interval: 1s}
"""


@pytest.fixture
def svc(tmp_path: Path, hub: Hub) -> Iterator[JobService]:
    policy = tmp_path / "lab.yaml"
    policy.write_text(POLICY)
    with job_service(free_port(), tmp_path / "data", None, hub.api_url, policy) as s:
        yield s


def test_a_managers_project_takes_work_that_runs_and_is_charged_to_it(
    svc: JobService, hub: Hub, shared: Path
) -> None:
    alice, bob = hub.token("alice"), hub.token("bob")
    r = svc.allot(alice, "account", "create", "p9", "--parent", "lab", "--shares", "2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "created lab/p9 (shares 2)"
    # Bob is in no account yet: he may not charge it.
    refused = svc.allot(bob, "submit", "-p", "small", "-A", "lab/p9", "--", "true", cwd=shared)
    assert refused.returncode == 1 and "no account 'lab/p9' that you can see" in refused.stderr
    r = svc.allot(alice, "account", "add", "lab/p9", "bob")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "bob is a member of lab/p9"
    members = svc.allot(alice, "account", "members", "lab/p9")
    assert "bob" in members.stdout and "a manager" in members.stdout

    r = svc.allot(
        bob, "submit", "--json", "-p", "small", "-A", "lab/p9", "--", "sleep", "2", cwd=shared
    )
    assert r.returncode == 0, r.stderr
    wid = int(json.loads(r.stdout)["id"])
    w = ended(svc, bob, wid)
    assert (w["status"], w["exit_code"], w["account"]) == ("stopped", 0, "lab/p9"), w

    # Charged to the project: 1 CPU × about 2 s at 3.6 an hour ≈ 0.002, the lab's total.
    def charged() -> float:
        with svc.client(alice) as c:
            report = c.get("usage", params={"account": "lab", "by": "account", "since": "1d"})
            assert report.status_code == 200, report.text
            rows = {row["key"]: row["cost_micros"] for row in report.json()["items"]}
            return rows.get("lab/p9", 0) if rows.get("lab/p9", 0) >= 1_000 else 0

    micros = wait_for(charged, 30, what="the job's charge")
    assert 1_000 <= micros <= 10_000, micros

    audit = svc.allot(alice, "account", "audit", "lab/p9", "--json")
    assert audit.returncode == 0, audit.stderr
    entries = [(e["actor"], e["action"], e["target"]) for e in json.loads(audit.stdout)]
    assert entries == [
        ("alice", "member.add", "bob in lab/p9"),
        ("alice", "account.create", "lab/p9"),
    ]
    # Carol, a member of the lab, reads no audit log and creates nothing.
    carol = hub.token("carol")
    denied = svc.allot(carol, "account", "audit", "lab")
    assert denied.returncode == 1 and "managers" in denied.stderr
    denied = svc.allot(carol, "account", "create", "p10", "--parent", "lab")
    assert denied.returncode == 1 and "manager of 'lab'" in denied.stderr
    # The project had work: archived, not removed; the lab's own account is not hers to archive.
    r = svc.allot(alice, "account", "archive", "lab/p9")
    assert r.returncode == 0 and r.stdout.strip() == "lab/p9 archived", r.stderr
    r = svc.allot(alice, "account", "archive", "lab")
    assert r.returncode == 1 and "above 'lab'" in r.stderr
