"""An account a manager created through the API is a full account to the controller: work
charged to it is admitted, runs and is counted for fair share under it, beside the policy's
accounts (the policy file does not name it)."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.orm import Session

from allotment.controller import scheduling
from allotment.controller.scheduling import VIEW_SECONDS
from allotment.controller.view import PolicyView, load_policy_view, usage
from allotment.scheduler.fairshare import fair_share_factors
from tests.controller.conftest import Fast


async def test_work_charged_to_a_created_sub_account_runs_and_counts_for_fair_share(
    fast: Fast,
) -> None:
    async with fast.client() as c:
        r = await c.post("accounts", json={"name": "p9", "parent": "lab", "shares": 3})
        assert r.status_code == 201, r.text
        # ... and one below it, whose parent the policy does not name either.
        r = await c.post("accounts", json={"name": "p9a", "parent": "p9"})
        assert r.status_code == 201, r.text
    await asyncio.sleep(VIEW_SECONDS)  # the scheduling loop's view of accounts is this old
    wid = await fast.submit(account="p9")
    deeper = await fast.submit(account="p9a")
    w = await fast.until(wid, "running")
    assert (w["account"], w["node"]) == ("lab/p9", "ws1")
    assert (await fast.until(deeper, "running"))["account"] == "lab/p9/p9a"
    assert fast.backend.processes[wid].spec.account == "lab/p9"
    fast.clock.advance(3600)
    fast.backend.finish(wid, 0)
    await fast.until(wid, "stopped")
    await fast.controller.meter.pass_once()  # fair share reads what the meter charged

    def read(session: Session) -> tuple[PolicyView, dict[tuple[str, str], float]]:
        view = load_policy_view(session)
        assert view is not None
        return view, usage(session, view, fast.clock.now())

    view, used = await fast.controller.db.run_read(read)
    assert view.accounts["lab/p9"].shares == 3.0
    assert view.accounts["lab/p9"].allocations == {}  # the lab's, found by walking up
    assert "lab/p9/p9a" in view.accounts
    user = "admin-token/setup"
    assert used[("lab/p9", user)] > 0
    shares = {path: a.shares for path, a in view.accounts.items()}
    factors = fair_share_factors(shares, used, [("lab", user), ("lab/p9", user)])
    # Ranked in the tree like any account: p9's use lowers its user's factor below the
    # same user's in the lab itself, which used nothing.
    assert factors[("lab/p9", user)] < factors[("lab", user)]


async def test_an_archived_or_orphaned_account_is_not_scheduled(fast: Fast) -> None:
    async with fast.client() as c:
        assert (await c.post("accounts", json={"name": "p8", "parent": "lab"})).is_success
        assert (await c.delete("accounts/p8")).json()["outcome"] == "removed"
        assert (await c.post("accounts", json={"name": "p7", "parent": "lab"})).is_success
        await asyncio.sleep(VIEW_SECONDS)
        wid = await fast.submit(account="p7")
        await fast.until(wid, "running")
        fast.backend.finish(wid, 0)
        await fast.until(wid, "stopped")
        assert (await c.delete("accounts/p7")).json()["outcome"] == "archived"
    view = await fast.controller.db.run_read(load_policy_view)
    assert view is not None
    assert set(view.accounts) == {"lab"}


async def test_work_charged_at_once_to_a_new_sub_account_is_not_rejected(
    fast: Fast, monkeypatch: pytest.MonkeyPatch
) -> None:
    # However soon after the view was read the account is made: here, always.
    monkeypatch.setattr(scheduling, "VIEW_SECONDS", 3600.0)
    wid = await fast.submit()
    await fast.until(wid, "running")  # the loop has read its view
    async with fast.client() as c:
        assert (await c.post("accounts", json={"name": "p6", "parent": "lab"})).is_success
    new = await fast.submit(account="p6")
    w = await fast.until(new, "running", "failed")
    assert w["status"] == "running", w["reason"]
