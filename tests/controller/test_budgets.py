"""Budgets that hold and escalate, against the real controller on the fake backend: new work
held with the reason, running work warned then stopped after the grace (or stepped down),
alerts raised once, and a raised budget releasing what it held. Spending is seeded as the
ledger's daily totals (``usage_days``), which is all a budget reads."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from allotment.db.tables import (
    Account,
    BudgetAlert,
    BudgetRow,
    Notification,
    Pool,
    Profile,
    UsageDay,
    User,
)
from tests.controller.conftest import Fast

#: lab (managed by carol) inside inst; 1 credit per CPU-hour; lab may spend 10 a day.
POLICY = """
accounts:
  inst: {managers: [carol]}
  lab: {parent: inst, members: [alice]}
users:
  alice: {email: alice@example.org}
pools:
  workstation:
    backend: local
    nodes:
      - {name: ws1, cpus: 4, memory: 16G}
    rates: {cpu: 1.0}
profiles:
  small:
    pool: workstation
    size: {cpus: 1, memory: 1G}
    max_runtime: 2h
  cheap:
    pool: workstation
    size: {cpus: 1, memory: 1G}
    priority: -100
allocations:
  - account: lab
    pool: workstation
    budget: {amount: 10, period: day, grace: 10m}
notifications: {email_domain: example.org}
scheduling: {stop_grace: 1s}
"""


@pytest.fixture
def policy() -> str:
    return POLICY


async def spend(fast: Fast, credits: float, account: str = "lab") -> None:
    """Add ``credits`` to today's daily total of ``account`` (as the meter would)."""
    db = fast.controller.db
    day = fast.clock.now().date()

    def add(session: Session) -> None:
        aid = session.execute(select(Account.id).where(Account.name == account)).scalar_one()
        uid = session.execute(select(User.id).where(User.name == "alice")).scalar_one()
        pid = session.execute(select(Pool.id)).scalar_one()
        row = session.get(UsageDay, (day, aid, uid, pid, 0))
        if row is None:
            session.add(
                UsageDay(
                    day=day,
                    account_id=aid,
                    user_id=uid,
                    pool_id=pid,
                    profile_id=0,
                    amount=round(credits * 1e6),
                )
            )
        else:
            row.amount += round(credits * 1e6)
        session.flush()

    await db.run_write(add)


async def budget_spec(fast: Fast, **changes: Any) -> None:
    """Change lab's budget in the database (as a manager's PUT would) and tell the loop."""

    def change(session: Session) -> None:
        row = session.execute(select(BudgetRow)).scalar_one()
        session.execute(
            update(BudgetRow).where(BudgetRow.id == row.id).values(spec={**row.spec, **changes})
        )

    await fast.controller.db.run_write(change)
    fast.controller.scheduling.budgets_changed()


async def rows(fast: Fast, *what: Any) -> list[Any]:
    return await fast.controller.db.run_read(lambda s: list(s.execute(select(*what)).all()))


async def test_a_spent_budget_holds_new_work_with_the_reason_and_a_raise_releases_it(
    fast: Fast,
) -> None:
    await spend(fast, 10)
    fast.controller.scheduling.budgets_changed()
    wid = await fast.submit()
    w = await fast.eventually(wid, lambda w: "spent" in (w["reason"] or ""))
    assert w["status"] == "pending"
    assert w["reason"] == (
        "inst/lab has spent 10.00 of its 10.00 credits on pool 'workstation' for 1 January; "
        "ask carol (manager) to raise it"
    )
    # Raised through the API (an administrator here): the held workload starts.
    async with fast.client() as c:
        r = await c.put(
            "accounts/lab/budget",
            params={"pool": "workstation"},
            json={"amount": 20, "period": "day"},
        )
    assert r.status_code == 200, r.text
    assert (r.json()["left"], r.json()["origin"]) == (10.0, "api")
    await fast.until(wid, "running")


async def test_work_that_would_overspend_waits_saying_how_much_is_left(fast: Fast) -> None:
    # 9 spent: 1 left; a 2-hour one-CPU job costs 2.
    await spend(fast, 9)
    fast.controller.scheduling.budgets_changed()
    wid = await fast.submit()
    w = await fast.eventually(wid, lambda w: "left" in (w["reason"] or ""))
    assert w["reason"] == (
        "its cost up to its maximum runtime (2.00 credits) would go beyond the 1.00 credits "
        "left of inst/lab's budget on pool 'workstation' for 1 January; ask carol (manager) to "
        "raise it"
    )
    assert w["expected_start"] is None
    # An overdraft of 1 makes room for it, and says so no more: it runs.
    await budget_spec(fast, overdraft=1)
    await fast.until(wid, "running")


async def test_running_work_is_warned_then_stopped_after_the_grace(fast: Fast) -> None:
    wid = await fast.submit()
    await fast.until(wid, "running")
    await spend(fast, 10)
    watch = fast.controller.budget_watch
    first = await watch.pass_once()
    assert first.warned == [wid] and not first.stopped
    assert [t for _, t in first.alerts] == [0.5, 0.8, 0.9, 1.0]
    w = await fast.get(wid)
    assert w["status"] == "running"
    assert w["reason"].endswith("ask carol (manager) to raise it. It will be stopped at 00:10 UTC")
    fast.clock.advance(9 * 60)
    assert not (await watch.pass_once()).stopped
    fast.clock.advance(60)
    assert (await watch.pass_once()).stopped == [wid]
    w = await fast.until(wid, "stopped")
    assert w["reason"].startswith("stopped: inst/lab has spent 10.00 of its 10.00 credits")
    # Each threshold was raised once, whatever the passes; one e-mail, to carol (the nearest
    # manager), for the highest threshold crossed (the owner here is the headless admin,
    # who has no address).
    alerts = await rows(fast, BudgetAlert.threshold)
    assert sorted(t for (t,) in alerts) == [0.5, 0.8, 0.9, 1.0]
    sent = await rows(fast, Notification.target, Notification.payload)
    assert [t for t, _ in sent] == ["carol@example.org"]
    assert (
        sent[0][1]["subject"]
        == "Budget of inst/lab on pool 'workstation': 100% spent for 1 January"
    )


async def test_with_step_down_running_work_goes_on_under_the_cheaper_profile(fast: Fast) -> None:
    await budget_spec(fast, step_down="cheap", grace="0s")
    wid = await fast.submit()
    await fast.until(wid, "running")
    await spend(fast, 10)
    done = await fast.controller.budget_watch.pass_once()
    assert done.stepped_down == [wid] and not done.stopped
    w = await fast.get(wid)
    assert w["status"] == "running" and w["profile"] == "cheap"
    assert w["reason"].startswith("stepped down to profile 'cheap': inst/lab has spent")
    # Stepped down once: later passes leave it running.
    again = await fast.controller.budget_watch.pass_once()
    assert not again.stepped_down and not again.stopped and not again.warned
    ids = await rows(fast, Profile.name)
    assert ("cheap",) in ids


async def test_an_institutes_budget_counts_its_labs_spending(fast: Fast) -> None:
    def add(session: Session) -> None:
        inst = session.execute(select(Account.id).where(Account.name == "inst")).scalar_one()
        session.add(
            BudgetRow(
                account_id=inst,
                pool_id=None,
                spec={"amount": 5, "period": "month"},
                origin="api",
                file_amount=None,
                updated_at=fast.clock.now(),
                updated_by="carol",
            )
        )
        session.flush()

    await fast.controller.db.run_write(add)
    await spend(fast, 5)
    fast.controller.scheduling.budgets_changed()
    wid = await fast.submit()
    w = await fast.eventually(wid, lambda w: "spent" in (w["reason"] or ""))
    assert w["reason"] == (
        "inst has spent 5.00 of its 5.00 credits for January; ask carol (manager) to raise it"
    )


async def test_the_meters_charges_are_what_budgets_and_the_quote_count(fast: Fast) -> None:
    # One CPU at 1 credit an hour for 90 minutes, charged by the real meter: 1.50 spent of
    # lab's 10, shown by the quote (and so the launch form) and by GET budgets alike.
    wid = await fast.submit()
    await fast.until(wid, "running")
    await fast.controller.meter.pass_once()
    fast.clock.advance(90 * 60)
    await fast.controller.meter.pass_once()
    async with fast.client() as c:
        quote = (await c.get("quote", params={"account": "lab", "profile": "small"})).json()
        listed = (await c.get("budgets")).json()["items"]
    (small,) = quote["profiles"]
    assert (small["budget"]["spent"], small["budget"]["left"]) == (1.5, 8.5)
    (lab,) = [b for b in listed if b["pool"] == "workstation"]
    assert (lab["spent"], lab["left"], lab["fraction"]) == (1.5, 8.5, 0.15)


async def test_a_raised_budget_alerts_again_and_gives_a_new_grace_when_it_is_spent(
    fast: Fast,
) -> None:
    wid = await fast.submit()
    await fast.until(wid, "running")
    await spend(fast, 10)
    watch = fast.controller.budget_watch
    assert (await watch.pass_once()).warned == [wid]
    # Raised to 20 through the API: the old alerts no longer stand.
    async with fast.client() as c:
        r = await c.put("accounts/lab/budget", params={"pool": "workstation"}, json={"amount": 20})
    assert r.status_code == 200, r.text
    assert [t for _, t in (await watch.pass_once()).alerts] == [0.5]
    # Long after the first warning the raised budget is spent: warned again, not stopped at
    # once, and the 100 % alert goes out again.
    fast.clock.advance(30 * 60)
    await spend(fast, 10)
    again = await watch.pass_once()
    assert again.warned == [wid] and not again.stopped
    assert [t for _, t in again.alerts] == [0.8, 0.9, 1.0]
