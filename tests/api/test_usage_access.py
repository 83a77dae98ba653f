"""Who sees whose usage, with tokens issued and verified by a real JupyterHub, on both
databases.

dean manages physics; alice manages physics/lab-a (members bob, carol); dave manages lab-b
(member erin); carol is also in lab-a/proj-y, which frank views; mallory is in no account;
hubadmin holds custom:allotment:admin. The policy's leaderboard is `managers` first, then
`members`.
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.api.test_usage import POLICY, at_noon, random_charges, seed
from tests.support.hub import Hub
from tests.support.service import Service, running_service

pytestmark = pytest.mark.jupyterhub


async def _get(svc: Service, token: str, **params: Any) -> tuple[int, dict[str, Any]]:
    async with svc.client(token) as c:
        r = await c.get("usage", params={"period": "2026", **params})
    return r.status_code, r.json()


async def test_each_sees_only_the_usage_their_roles_allow(
    database_url: str, tmp_path: Path, hub: Hub
) -> None:
    charges = random_charges(random.Random(7), 200, datetime(2026, 11, 1, tzinfo=UTC), 30)
    by_user = {u: sum(c.amount for c in charges if c.user == u) for u in {c.user for c in charges}}

    def within(root: str) -> int:
        return sum(
            c.amount for c in charges if c.account == root or c.account.startswith(root + "/")
        )

    async with running_service(
        database_url, tmp_path, policy_text=POLICY, hub_api_url=hub.api_url
    ) as svc:
        at_noon(svc, date(2026, 12, 15))
        await seed(svc, charges)
        t = {
            u: hub.token(u)
            for u in ("alice", "bob", "carol", "dean", "erin", "frank", "mallory", "hubadmin")
        }

        # Everyone: their own usage, wherever charged, by default.
        for user in ("bob", "carol", "erin", "mallory"):
            status, body = await _get(svc, t[user])
            assert status == 200
            assert body["total"]["cost_micros"] == by_user.get(user, 0), user
            status, body = await _get(svc, t[user], by="user")
            assert [i["key"] for i in body["items"]] == ([user] if user in by_user else [])

        # A member: the account's totals, not who spent them (leaderboard: managers).
        status, body = await _get(svc, t["bob"], account="lab-a", by="account")
        assert status == 200
        assert body["total"]["cost_micros"] == within("physics/lab-a")
        status, body = await _get(svc, t["bob"], account="lab-a", by="user")
        assert status == 403
        assert "managers and viewers only" in body["detail"]
        assert "accounting.leaderboard" in body["detail"]
        status, _ = await _get(svc, t["bob"], account="lab-a", user="carol")
        assert status == 403
        status, body = await _get(svc, t["bob"], account="lab-a", user="bob")
        assert status == 200
        assert body["total"]["cost_micros"] == by_user["bob"]
        # Another user's usage without an account: only what bob may see of it (nothing).
        status, body = await _get(svc, t["bob"], user="carol")
        assert (status, body["items"]) == (200, [])

        # Above one's own accounts: refused, saying what one may see; another tenant's: 404.
        status, body = await _get(svc, t["bob"], account="physics")
        assert status == 403
        assert "'physics/lab-a'" in body["detail"] and "your own" in body["detail"]
        for user, account in [("bob", "lab-b"), ("erin", "lab-a"), ("mallory", "lab-a")]:
            status, body = await _get(svc, t[user], account=account)
            assert status == 404, (user, account)
            assert body["detail"] == f"There is no account '{account}' that you can see."

        # Managers and viewers: their subtree, per user too.
        status, body = await _get(svc, t["alice"], account="lab-a", by="user")
        assert status == 200
        assert {i["key"]: i["cost_micros"] for i in body["items"]} == {
            u: sum(
                c.amount for c in charges if c.user == u and c.account.startswith("physics/lab-a")
            )
            for u in ("alice", "bob", "carol")
        }
        status, body = await _get(svc, t["alice"], user="carol", by="account")
        assert {i["key"] for i in body["items"]} == {"physics/lab-a", "physics/lab-a/proj-y"}
        status, body = await _get(svc, t["alice"], user="erin")
        assert (status, body["items"]) == (200, [])
        status, body = await _get(svc, t["frank"], account="proj-y", by="user")
        assert status == 200
        assert body["total"]["cost_micros"] == within("physics/lab-a/proj-y")
        status, _ = await _get(svc, t["frank"], account="lab-a")
        assert status == 403
        status, body = await _get(svc, t["dean"], account="physics", by="user")
        assert body["total"]["cost_micros"] == sum(c.amount for c in charges)
        assert {i["key"] for i in body["items"]} == set(by_user)

        # Administrators: everything, by default.
        status, body = await _get(svc, t["hubadmin"], by="user")
        assert body["total"]["cost_micros"] == sum(c.amount for c in charges)

        # With `leaderboard: members`, members see who spent their account's money.
        async with svc.admin() as c:
            r = await c.put(
                "policy",
                json={
                    "text": POLICY.replace("leaderboard: managers", "leaderboard: members"),
                    "filename": "policy.yaml",
                },
            )
            assert r.status_code == 200, r.text
        status, body = await _get(svc, t["bob"], account="lab-a", by="user")
        assert status == 200
        assert {i["key"] for i in body["items"]} == {"alice", "bob", "carol"} & set(by_user)
        status, body = await _get(svc, t["bob"], account="physics", by="user")
        assert status == 403  # the leaderboard is of one's own accounts
