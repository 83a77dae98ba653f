"""Delegated administration, tried by hostile tenants with tokens issued and verified by a real
JupyterHub, on both databases.

The policy is examples/department.yaml: dean manages physics; alice manages physics/lab-a
(members bob, carol); dave manages physics/lab-b (member erin); frank views lab-a/proj-y;
hubadmin holds custom:allotment:admin in the hub. Alice is the hostile manager: everything she
does outside lab-a is refused, 404 where she cannot see the account (existence does not leak)
and 403 where she can see it but may not act.
"""

from __future__ import annotations

import httpx
import pytest

from tests.support.hub import Hub
from tests.support.service import Service

pytestmark = pytest.mark.jupyterhub

READ_SUBMIT = ["custom:allotment:read", "custom:allotment:submit"]


def status(r: httpx.Response) -> int:
    if r.status_code >= 400:
        assert r.headers["content-type"] == "application/problem+json", r.text
    return r.status_code


async def test_a_hostile_manager_stays_inside_her_own_lab(hub_service: Service, hub: Hub) -> None:
    async with hub_service.client(hub.token("alice")) as c:
        # No sub-account under another lab (unseen: 404) or above her own (seen: 403).
        assert status(await c.post("accounts", json={"name": "x1", "parent": "lab-b"})) == 404
        assert status(await c.post("accounts", json={"name": "x2", "parent": "physics"})) == 403
        assert status(await c.post("accounts", json={"name": "x3"})) == 403  # no roots
        # No raising her own lab's weight among its siblings, nor the other lab's.
        assert status(await c.patch("accounts/lab-a", json={"shares": 100})) == 403
        assert status(await c.patch("accounts/lab-b", json={"shares": 0})) == 404
        # No joining another lab, or the institute, as anything.
        for role in ("member", "manager"):
            r = await c.put("accounts/lab-b/members/alice", json={"role": role})
            assert status(r) == 404
            r = await c.put("accounts/physics/members/alice", json={"role": role})
            assert status(r) == 403
        assert status(await c.delete("accounts/lab-b/members/erin")) == 404
        # No reading another lab's audit log, nor the institute's (which holds lab-b's).
        assert status(await c.get("audit", params={"account": "lab-b"})) == 404
        assert status(await c.get("audit", params={"account": "physics"})) == 403
        # No archiving her own lab, or the policy's projects inside it.
        assert status(await c.delete("accounts/lab-a")) == 403
        assert status(await c.delete("accounts/proj-x")) == 409
    async with hub_service.client(hub.token("dean")) as c:
        listed = (await c.get("accounts", params={"archived": True})).json()["items"]
        shares = {a["path"]: a["shares"] for a in listed}
        assert shares["physics/lab-a"] == 2 and shares["physics/lab-b"] == 1
        assert not {"x1", "x2", "x3"} & {a["name"] for a in listed}
        members = (await c.get("accounts/lab-b/members")).json()["items"]
        assert "alice" not in {m["user"] for m in members}


async def test_a_manager_administers_her_subtree_and_it_is_audited(
    hub_service: Service, hub: Hub
) -> None:
    async with hub_service.client(hub.token("alice")) as c:
        r = await c.post("accounts", json={"name": "p9", "parent": "lab-a", "shares": 2})
        assert r.status_code == 201, r.text
        assert (await c.put("accounts/p9/members/bob", json={"role": "member"})).is_success
        assert (await c.patch("accounts/p9", json={"shares": 4})).is_success
        assert (await c.patch("accounts/proj-y", json={"shares": 5})).is_success
        mine = (await c.get("audit")).json()["items"]
        lab = (await c.get("audit", params={"account": "p9"})).json()["items"]
    assert [(e["actor"], e["action"]) for e in lab] == [
        ("alice", "account.update"),
        ("alice", "member.add"),
        ("alice", "account.create"),
    ]
    # Without `account`: every subtree she manages, and nothing else (no site-wide entries,
    # none of lab-b's).
    assert mine[:4] == [e for e in mine if e["actor"] == "alice"]  # newest first: her four changes
    assert all(e["account"].startswith("physics/lab-a") for e in mine)
    # Another lab's manager cannot see it; the institute's manager can, with her changes.
    async with hub_service.client(hub.token("dave")) as c:
        assert status(await c.get("accounts/p9")) == 404
        assert status(await c.get("audit", params={"account": "p9"})) == 404
        theirs = (await c.get("audit")).json()["items"]
        assert all(e["account"].startswith("physics/lab-b") for e in theirs)
    async with hub_service.client(hub.token("dean")) as c:
        seen = (await c.get("audit", params={"account": "lab-a"})).json()["items"]
        assert {"account.create", "member.add"} <= {e["action"] for e in seen}
    # Bob, now a member of p9, charges it.
    async with hub_service.client(hub.token("bob")) as c:
        r = await c.post(
            "workloads", json={"profile": "small", "command": ["true"], "account": "p9"}
        )
        assert r.status_code == 201, r.text
        assert r.json()["account"] == "physics/lab-a/p9"


async def test_viewers_members_and_read_only_tokens_change_nothing(
    hub_service: Service, hub: Hub
) -> None:
    attempts = [
        ("POST", "accounts", {"name": "v1", "parent": "proj-y"}),
        ("PATCH", "accounts/proj-y", {"shares": 9}),
        ("PUT", "accounts/proj-y/members/frank", {"role": "manager"}),
        ("DELETE", "accounts/proj-y/members/carol", None),
        ("DELETE", "accounts/proj-y", None),
    ]
    for who, scopes in (("frank", None), ("carol", None), ("alice", READ_SUBMIT)):
        async with hub_service.client(hub.token(who, scopes)) as c:
            for method, path, body in attempts:
                r = await c.request(method, path, json=body)
                assert status(r) == 403, (who, method, path, r.text)
            # Viewers and members read workloads, not who administers them how (a manager's
            # token without `manage` still reads: reading is what it is for).
            expected = 200 if who == "alice" else 403
            assert status(await c.get("audit")) == expected
            assert status(await c.get("audit", params={"account": "proj-y"})) == expected
    async with hub_service.client(hub.token("alice")) as c:
        members = (await c.get("accounts/proj-y/members")).json()["items"]
        assert {(m["user"], m["role"]) for m in members} == {
            ("carol", "member"),
            ("frank", "viewer"),
        }
        assert (await c.get("accounts/proj-y")).json()["shares"] == 3


async def test_an_administrator_may_do_anything(hub_service: Service, hub: Hub) -> None:
    async with hub_service.client(hub.token("hubadmin")) as c:
        assert (await c.post("accounts", json={"name": "chem"})).status_code == 201
        assert (await c.post("accounts", json={"name": "c1", "parent": "chem"})).status_code == 201
        assert (await c.patch("accounts/lab-a", json={"shares": 3})).status_code == 200
        assert (await c.put("accounts/chem/members/erin", json={"role": "manager"})).is_success
        assert (await c.delete("accounts/c1")).json()["outcome"] == "removed"
        every = (await c.get("audit", params={"limit": 1000})).json()["items"]
    assert {"policy.apply", "account.create", "account.remove", "member.add"} <= {
        e["action"] for e in every
    }
    assert "" in {e["account"] for e in every}  # the site-wide entries of the apply
    # Erin now manages chem: the audit of chem is hers to read, lab-b's changes are not.
    async with hub_service.client(hub.token("erin")) as c:
        chem = (await c.get("audit", params={"account": "chem"})).json()["items"]
        assert [e["action"] for e in chem][-1] == "account.create"
        assert status(await c.get("audit", params={"account": "lab-b"})) == 403


async def test_an_underscore_in_a_managers_account_matches_only_itself(
    hub_service: Service, hub: Hub
) -> None:
    """Names may hold `_`, which SQL's LIKE reads as any character: the manager of an
    account `physics_lab-a` must not see the workloads or audit entries below
    `physics/lab-a`."""
    async with hub_service.client(hub.token("hubadmin")) as c:
        assert (await c.post("accounts", json={"name": "physics_lab-a"})).is_success
        r = await c.put("accounts/physics_lab-a/members/mallory", json={"role": "manager"})
        assert r.is_success
    wid = await _submit(hub_service, hub.token("bob"), "proj-x")
    async with hub_service.client(hub.token("alice")) as c:
        assert (await c.put("accounts/proj-x/members/zed", json={"role": "member"})).is_success
    async with hub_service.client(hub.token("mallory")) as c:
        assert (await c.get("workloads")).json()["items"] == []
        assert status(await c.get(f"workloads/{wid}")) == 404
        entries = (await c.get("audit", params={"limit": 1000})).json()["items"]
        assert {e["account"] for e in entries} == {"physics_lab-a"}


async def _submit(svc: Service, token: str, account: str) -> int:
    async with svc.client(token) as c:
        r = await c.post(
            "workloads", json={"profile": "small", "command": ["true"], "account": account}
        )
    assert r.status_code == 201, r.text
    return int(r.json()["id"])
