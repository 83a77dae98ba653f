"""Budgets through the API, on both databases: the policy's budgets synced (a manager's survives
an apply until the file changes its amount), spending from the ledger's daily totals of the
whole subtree, and who may set which budget, with real JupyterHub tokens: a member may not, a
manager only below their own account and within what it has, an administrator any; every
change audited."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from allotment.db.tables import Account, AuditEntry, Pool, UsageDay, User
from tests.support.hub import Hub
from tests.support.service import Service, running_service

POLICY = """
currency: EUR
accounts:
  physics: {managers: [dean], budget: {amount: 1000, period: month}}
  lab-a: {parent: physics, managers: [alice], members: [bob]}
  proj-y: {parent: lab-a, members: [carol]}
pools:
  box:
    nodes: [{name: n1, cpus: 8, memory: 32G}]
    rates: {cpu: 1.0}
profiles:
  small: {pool: box, size: {cpus: 1, memory: 1G}}
  cheap: {pool: box, size: {cpus: 1, memory: 1G}, priority: -10}
allocations:
  - account: lab-a
    pool: box
    budget: {amount: 300, period: month, step_down: cheap}
"""


async def seed_spending(svc: Service, account: str, credits: float) -> None:
    """What the meter would have added to today's total of ``account``."""
    async with svc.app.state.allotment.db.write() as session:
        aid = (
            await session.execute(select(Account.id).where(Account.name == account))
        ).scalar_one()
        pid = (await session.execute(select(Pool.id))).scalar_one()
        uid = (await session.execute(select(User.id).where(User.name == "bob"))).scalar_one()
        session.add(
            UsageDay(
                day=svc.clock.now().date(),
                account_id=aid,
                user_id=uid,
                pool_id=pid,
                profile_id=0,
                amount=round(credits * 1e6),
            )
        )


async def budgets(svc: Service, token: str, **params: Any) -> list[dict[str, Any]]:
    async with svc.client(token) as c:
        r = await c.get("budgets", params=params)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def put(
    svc: Service, token: str, path: str, pool: str | None = None, **body: Any
) -> tuple[int, dict[str, Any]]:
    async with svc.client(token) as c:
        r = await c.put(f"accounts/{path}/budget", json=body, params={"pool": pool} if pool else {})
    return r.status_code, r.json()


async def apply(svc: Service, text: str) -> list[str]:
    async with svc.admin() as c:
        r = await c.put("policy", json={"text": text, "filename": "p.yaml"})
    assert r.status_code == 200, r.text
    changes: list[str] = r.json()["changes"]
    return changes


async def test_the_files_budgets_are_synced_and_a_managers_survives_an_apply(
    database_url: str, tmp_path: Path
) -> None:
    async with running_service(database_url, tmp_path, policy_text=POLICY) as svc:
        svc.clock.advance(12 * 3600)  # 1 January 2026, noon
        await seed_spending(svc, "proj-y", 250)  # counts for lab-a and physics too
        found = {(b["account"], b["pool"]): b for b in await budgets(svc, svc.admin_token)}
        assert set(found) == {("physics", None), ("physics/lab-a", "box")}
        lab = found[("physics/lab-a", "box")]
        assert (lab["amount"], lab["spent"], lab["left"], lab["origin"]) == (300, 250, 50, "policy")
        assert lab["step_down"] == "cheap" and not lab["blocked"]
        assert lab["period_start"].startswith("2026-01-01T00:00:00")
        assert found[("physics", None)]["spent"] == 250
        # The administrator raises lab-a's budget; an apply of the same file keeps it.
        status, body = await put(svc, svc.admin_token, "physics/lab-a", "box", amount=400)
        assert status == 200, body
        assert (body["amount"], body["origin"], body["left"]) == (400, "api", 150)
        assert not [c for c in await apply(svc, POLICY + "\n") if "budget" in c]
        found = {(b["account"], b["pool"]): b for b in await budgets(svc, svc.admin_token)}
        assert found[("physics/lab-a", "box")]["amount"] == 400
        # The file changes that amount: the file wins.
        changes = await apply(svc, POLICY.replace("amount: 300", "amount: 350"))
        assert "~ physics/lab-a budget on box: 400 → 350" in changes
        found = {(b["account"], b["pool"]): b for b in await budgets(svc, svc.admin_token)}
        assert (
            found[("physics/lab-a", "box")]["amount"],
            found[("physics/lab-a", "box")]["origin"],
        ) == (350, "policy")
        # Spent: it says so, with the reason held work is given.
        await seed_spending(svc, "lab-a", 100)
        (lab,) = [b for b in await budgets(svc, svc.admin_token) if b["pool"] == "box"]
        assert lab["blocked"] and lab["reason"] == (
            "physics/lab-a has spent 350.00 of its 350.00 EUR on pool 'box' for January; "
            "ask alice (manager) to raise it"
        )
        # The file drops its budgets: they go.
        changes = await apply(
            svc,
            POLICY.split("allocations:")[0].replace(", budget: {amount: 1000, period: month}", ""),
        )
        assert "- physics budget" in changes and "- physics/lab-a budget on box" in changes
        assert await budgets(svc, svc.admin_token) == []
        async with svc.app.state.allotment.db.read() as session:
            audit = (
                await session.execute(
                    select(AuditEntry.actor, AuditEntry.action, AuditEntry.target)
                    .where(AuditEntry.action.like("budget.%"))
                    .order_by(AuditEntry.id)
                )
            ).all()
        assert audit[0][1:] == ("budget.set", "physics budget")
        assert ("budget.set", "physics/lab-a budget on box") in [a[1:] for a in audit]
        assert audit[-1][1] == "budget.remove"


async def test_bad_budgets_are_explained(database_url: str, tmp_path: Path) -> None:
    async with running_service(database_url, tmp_path, policy_text=POLICY) as svc:
        status, body = await put(svc, svc.admin_token, "lab-a", amount=-1)
        assert status == 422
        status, body = await put(svc, svc.admin_token, "lab-a", amount=5, period="fortnight")
        assert status == 422
        # Money that could not be counted in millionths stops nothing: it is refused.
        for amount, overdraft in ((1e303, 0), (1, 1e303)):
            status, body = await put(
                svc, svc.admin_token, "lab-a", amount=amount, overdraft=overdraft
            )
            assert status == 422, body
        status, body = await put(svc, svc.admin_token, "lab-a", "box", amount=5, step_down="nope")
        assert status == 422 and "profile 'nope', which does not exist" in body["detail"]
        status, body = await put(svc, svc.admin_token, "lab-a", "gpu", amount=5)
        assert status == 404 and "no pool 'gpu'" in body["detail"]
        status, body = await put(svc, svc.admin_token, "nowhere", amount=5)
        assert status == 404


@pytest.mark.jupyterhub
async def test_who_may_set_which_budget(database_url: str, tmp_path: Path, hub: Hub) -> None:
    async with running_service(
        database_url, tmp_path, policy_text=POLICY, hub_api_url=hub.api_url
    ) as svc:
        t = {u: hub.token(u) for u in ("alice", "bob", "carol", "dean", "mallory", "hubadmin")}
        # A member may not, not even below; a manager not on their own account.
        for who, path in (("bob", "lab-a"), ("bob", "proj-y"), ("alice", "lab-a")):
            status, body = await put(svc, t[who], path, amount=1)
            assert status == 403, (who, path, body)
            assert "Only a manager of an account above" in body["detail"]
        # Below their own: yes, recorded with who did it.
        status, body = await put(svc, t["alice"], "proj-y", amount=100)
        assert status == 200 and body["account"] == "physics/lab-a/proj-y"
        # Within what their own account has: dean's physics has 1,000 a month.
        status, body = await put(svc, t["dean"], "lab-a", amount=2000)
        assert status == 403 and "at most 1,000.00 EUR per month" in body["detail"]
        status, body = await put(svc, t["dean"], "lab-a", amount=800)
        assert status == 200
        await seed_spending(svc, "lab-a", 950)
        status, body = await put(svc, t["dean"], "lab-a", amount=100)
        assert (
            status == 403
            and "physics's budget has 50.00 EUR of its 1,000.00 EUR left" in (body["detail"])
        )
        # A budget of another period is compared per day: 1,000 a month is about 230 a week,
        # and never a million a year; an overdraft counts with the amount.
        status, body = await put(svc, t["dean"], "lab-a", amount=1e6, period="year")
        assert status == 403 and "EUR per year (overdraft included)" in body["detail"]
        status, body = await put(svc, t["dean"], "lab-a", amount=200, period="week", overdraft=50)
        assert status == 403 and "per week (overdraft included)" in body["detail"]
        status, body = await put(svc, t["dean"], "lab-a", amount=100, period="week")
        assert status == 200
        # The administrator: anything, anywhere.
        status, body = await put(svc, t["hubadmin"], "physics", amount=5000)
        assert status == 200 and body["amount"] == 5000
        # Someone in no account sees no budget, and cannot find the account.
        assert await budgets(svc, t["mallory"]) == []
        status, _ = await put(svc, t["mallory"], "lab-a", amount=1)
        assert status == 404
        # carol sees the budgets over her account, not set them.
        seen = {(b["account"], b["pool"]) for b in await budgets(svc, t["carol"])}
        assert ("physics/lab-a/proj-y", None) in seen and ("physics", None) in seen
        async with svc.app.state.allotment.db.read() as session:
            audit = (
                await session.execute(
                    select(AuditEntry.actor, AuditEntry.target, AuditEntry.before, AuditEntry.after)
                    .where(AuditEntry.action == "budget.set", AuditEntry.actor.in_(list(t)))
                    .order_by(AuditEntry.id)
                )
            ).all()
        assert [(a[0], a[1]) for a in audit] == [
            ("alice", "physics/lab-a/proj-y budget"),
            ("dean", "physics/lab-a budget"),
            ("dean", "physics/lab-a budget"),
            ("hubadmin", "physics budget"),
        ]
        assert audit[0][2] is None and audit[0][3]["amount"] == 100
        assert audit[2][2]["amount"] == 800 and audit[2][3]["period"] == "week"
        assert audit[3][2]["amount"] == 1000 and audit[3][3]["amount"] == 5000
        assert date.today()  # the hub's clock is real; the service's is the fake one
