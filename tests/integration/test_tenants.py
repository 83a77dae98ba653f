"""Tenant boundaries, with tokens issued and verified by a real JupyterHub, on both databases.

The policy is examples/department.yaml: dean manages physics; alice manages physics/lab-a
(members bob, carol); dave manages physics/lab-b (member erin); frank views lab-a/proj-y;
mallory is in no account; hubadmin holds custom:allotment:admin in the hub.
"""

from __future__ import annotations

import pytest

from tests.support.hub import Hub
from tests.support.service import Service

pytestmark = pytest.mark.jupyterhub

READ = ["custom:allotment:read"]


async def submit(svc: Service, token: str, account: str = "lab-a", **body: object) -> int:
    async with svc.client(token) as c:
        r = await c.post(
            "workloads", json={"profile": "small", "command": ["true"], "account": account, **body}
        )
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


async def test_hub_token_identifies_the_user(hub_service: Service, hub: Hub) -> None:
    async with hub_service.client(hub.token("alice")) as c:
        me = (await c.get("me")).json()
    assert me["name"] == "alice"
    assert not me["admin"]
    assert {(m["account"], m["role"]) for m in me["memberships"]} == {("physics/lab-a", "manager")}


async def test_a_user_cannot_read_or_cancel_another_users_workload(
    hub_service: Service, hub: Hub
) -> None:
    wid = await submit(hub_service, hub.token("bob"))
    for outsider in ("erin", "carol", "mallory"):  # another lab, same lab, no lab
        async with hub_service.client(hub.token(outsider)) as c:
            assert (await c.get(f"workloads/{wid}")).status_code == 404
            r = await c.post(f"workloads/{wid}/cancel")
            assert r.status_code == 404
            assert r.headers["content-type"] == "application/problem+json"
            listed = (await c.get("workloads", params={"user": "bob"})).json()["items"]
            assert listed == []
    async with hub_service.client(hub.token("bob")) as c:
        assert (await c.get(f"workloads/{wid}")).json()["status"] == "pending"


async def test_managers_see_and_cancel_within_their_subtree_only(
    hub_service: Service, hub: Hub
) -> None:
    in_lab_a = await submit(hub_service, hub.token("bob"))
    in_lab_b = await submit(hub_service, hub.token("erin"), account="lab-b")
    async with hub_service.client(hub.token("alice")) as c:
        ids = {w["id"] for w in (await c.get("workloads")).json()["items"]}
        assert ids == {in_lab_a}
        assert (await c.get(f"workloads/{in_lab_b}")).status_code == 404
        assert (await c.post(f"workloads/{in_lab_b}/cancel")).status_code == 404
        r = await c.post(f"workloads/{in_lab_a}/cancel")
        assert r.status_code == 200
        assert r.json()["reason"] == "cancelled by alice"
    async with hub_service.client(hub.token("dean")) as c:  # manages the whole institute
        ids = {w["id"] for w in (await c.get("workloads")).json()["items"]}
        assert ids == {in_lab_a, in_lab_b}


async def test_a_manager_token_without_manage_scope_cannot_cancel_others(
    hub_service: Service, hub: Hub
) -> None:
    wid = await submit(hub_service, hub.token("bob"))
    async with hub_service.client(hub.token("alice", READ + ["custom:allotment:submit"])) as c:
        assert (await c.get(f"workloads/{wid}")).status_code == 200
        r = await c.post(f"workloads/{wid}/cancel")
        assert r.status_code == 403
        assert "bob" in r.json()["detail"]


async def test_a_viewer_sees_but_cannot_cancel_or_spend(hub_service: Service, hub: Hub) -> None:
    wid = await submit(hub_service, hub.token("carol"), account="proj-y")
    async with hub_service.client(hub.token("frank")) as c:
        assert (await c.get(f"workloads/{wid}")).status_code == 200
        assert (await c.post(f"workloads/{wid}/cancel")).status_code == 403
        r = await c.post(
            "workloads", json={"profile": "small", "command": ["true"], "account": "proj-y"}
        )
        assert r.status_code == 403


async def test_accounts_of_other_labs_are_invisible(hub_service: Service, hub: Hub) -> None:
    async with hub_service.client(hub.token("erin")) as c:
        paths = [a["path"] for a in (await c.get("accounts")).json()["items"]]
        assert paths == ["physics", "physics/lab-b"]
        assert (await c.get("accounts/physics/lab-a")).status_code == 404
        assert (await c.get("accounts/lab-a")).status_code == 404
        assert (await c.get("accounts/physics/lab-a/members")).status_code == 404
        r = await c.get("workloads", params={"account": "lab-a"})
        assert r.status_code == 404
    async with hub_service.client(hub.token("mallory")) as c:
        assert (await c.get("accounts")).json()["items"] == []


async def test_a_lab_manager_cannot_change_another_lab(hub_service: Service, hub: Hub) -> None:
    async with hub_service.client(hub.token("alice")) as c:
        assert (await c.patch("accounts/physics/lab-b", json={"shares": 9})).status_code == 404
        r = await c.put("accounts/physics/lab-b/members/mallory", json={"role": "member"})
        assert r.status_code == 404
        # Her own lab's weight among its siblings belongs to the institute's manager.
        assert (await c.patch("accounts/physics/lab-a", json={"shares": 9})).status_code == 403
        # Inside her lab she administers freely.
        r = await c.patch("accounts/physics/lab-a/proj-x", json={"shares": 5})
        assert r.status_code == 200 and r.json()["shares"] == 5
        r = await c.put("accounts/physics/lab-a/members/mallory", json={"role": "member"})
        assert r.status_code == 200 and r.json()["origin"] == "api"
    async with hub_service.client(hub.token("dave")) as c:
        assert (await c.get("accounts/physics/lab-b")).json()["shares"] == 1
    async with hub_service.client(hub.token("dean")) as c:
        r = await c.patch("accounts/physics/lab-a", json={"shares": 3})
        assert r.status_code == 200


async def test_membership_added_by_a_manager_takes_effect(hub_service: Service, hub: Hub) -> None:
    async with hub_service.client(hub.token("mallory")) as c:
        r = await c.post("workloads", json={"profile": "small", "command": ["true"]})
        assert r.status_code == 422
        assert "not a member of any account" in r.json()["detail"]
    async with hub_service.client(hub.token("alice")) as c:
        r = await c.put("accounts/lab-a/members/mallory", json={"role": "member"})
        assert r.status_code == 200
    await submit(hub_service, hub.token("mallory"))
    async with hub_service.client(hub.token("alice")) as c:
        assert (await c.delete("accounts/lab-a/members/mallory")).status_code == 204
        r = await c.delete("accounts/lab-a/members/bob")
        assert r.status_code == 409  # stated by the policy file
    async with hub_service.client(hub.token("mallory")) as c:
        r = await c.post(
            "workloads", json={"profile": "small", "command": ["true"], "account": "lab-a"}
        )
        assert r.status_code == 404


async def test_read_scope_cannot_submit(hub_service: Service, hub: Hub) -> None:
    async with hub_service.client(hub.token("bob", READ)) as c:
        r = await c.post(
            "workloads", json={"profile": "small", "command": ["true"], "account": "lab-a"}
        )
        assert r.status_code == 403
        assert "custom:allotment:submit" in r.json()["detail"]
        assert (await c.get("workloads")).status_code == 200


async def test_a_token_without_allotment_scopes_is_refused(hub_service: Service, hub: Hub) -> None:
    async with hub_service.client(hub.token("bob", ["read:users:name!user=bob"])) as c:
        r = await c.get("me")
    assert r.status_code == 403
    assert "custom:allotment:read" in r.json()["detail"]


async def test_unknown_and_revoked_tokens_are_refused(hub_service: Service, hub: Hub) -> None:
    async with hub_service.client("not-a-real-token") as c:
        r = await c.get("me")
        assert r.status_code == 401
        assert r.json()["title"] == "Not authenticated"
    token = hub.token("erin")
    async with hub_service.client(token) as c:
        assert (await c.get("me")).status_code == 200
        hub.revoke_all("erin")
        assert (await c.get("me")).status_code == 401  # token_cache_seconds is 0 here


async def test_only_admins_apply_policy(hub_service: Service, hub: Hub) -> None:
    text = hub_service.data_dir.parent / "p.yaml"
    body = {"text": "accounts:\n  solo: {}\n", "dry_run": True}
    async with hub_service.client(hub.token("dean")) as c:
        assert (await c.put("policy", json=body)).status_code == 403
        assert (await c.get("policy")).status_code == 403
    async with hub_service.client(hub.token("hubadmin")) as c:
        r = await c.put("policy", json=body)
        assert r.status_code == 200, r.text
        assert "+ account solo (shares 1)" in r.json()["changes"]
        assert r.json()["version"] is None
        paths = [a["path"] for a in (await c.get("accounts")).json()["items"]]
        assert "solo" not in paths and "physics/lab-a" in paths  # dry run changed nothing
    assert not text.exists()


async def test_managers_see_only_their_subtree_of_a_members_memberships(
    hub_service: Service, hub: Hub
) -> None:
    async with hub_service.client(hub.token("dave")) as c:  # manages lab-b
        r = await c.put("accounts/lab-b/members/bob", json={"role": "member"})
        assert r.status_code == 200
    async with hub_service.client(hub.token("alice")) as c:  # manages lab-a
        bob = (await c.get("users/bob")).json()
        assert {m["account"] for m in bob["memberships"]} == {
            "physics/lab-a",
            "physics/lab-a/proj-x",
        }
        names = [u["name"] for u in (await c.get("users")).json()["items"]]
        assert names == ["alice", "bob", "carol", "frank"]
        assert (await c.get("users/erin")).status_code == 404
    async with hub_service.client(hub.token("erin")) as c:
        assert [u["name"] for u in (await c.get("users")).json()["items"]] == ["erin"]


async def test_each_user_sees_the_profiles_they_may_launch(hub_service: Service, hub: Hub) -> None:
    expected = {
        "mallory": ["small"],  # offered to everyone
        "erin": ["gpu-node", "small"],  # lab-b lies inside physics, not inside lab-a
        "bob": ["gpu-a100", "gpu-node", "small"],
        "dean": ["gpu-a100", "gpu-node", "small"],  # manages physics, so may charge lab-a
        "frank": ["small"],  # a viewer spends nothing
    }
    for user, names in expected.items():
        async with hub_service.client(hub.token(user)) as c:
            got = [p["name"] for p in (await c.get("profiles")).json()["items"]]
        assert got == names, user


async def test_catalogue_lists_paginate(hub_service: Service) -> None:
    async with hub_service.admin() as c:
        first = (await c.get("profiles", params={"all": True, "limit": 2})).json()
        assert [p["name"] for p in first["items"]] == ["gpu-a100", "gpu-node"]
        rest = (
            await c.get("profiles", params={"all": True, "cursor": first["next_cursor"]})
        ).json()
        assert [p["name"] for p in rest["items"]] == ["small"] and rest["next_cursor"] is None
        pools = (await c.get("pools", params={"limit": 1})).json()
        assert [p["name"] for p in pools["items"]] == ["gpu"] and pools["next_cursor"] == "gpu"
        gpu_only = (await c.get("profiles", params={"all": True, "pool": "gpu"})).json()
        assert [p["name"] for p in gpu_only["items"]] == ["gpu-a100", "gpu-node"]


async def test_the_spawner_service_acts_for_the_user_it_names(
    hub_service: Service, hub: Hub
) -> None:
    acting = {"X-Allotment-User": "bob"}
    async with hub_service.client(hub.spawner_token) as c:
        me = (await c.get("me", headers=acting)).json()
        assert me["name"] == "bob" and not me["admin"]
        r = await c.post(
            "workloads",
            headers=acting,
            json={"kind": "session", "profile": "small", "command": ["jupyterhub-singleuser"]},
        )
        assert r.status_code == 201, r.text
        assert (r.json()["user"], r.json()["account"]) == ("bob", "physics/lab-a")
        # Without naming a user it is nobody.
        r = await c.get("me")
        assert r.status_code == 422 and "X-Allotment-User" in r.json()["detail"]
        # Acting for erin, it cannot see or cancel bob's session.
        session = (await c.get("workloads", headers=acting)).json()["items"][0]["id"]
        as_erin = {"X-Allotment-User": "erin"}
        assert (await c.post(f"workloads/{session}/cancel", headers=as_erin)).status_code == 404
    # Another service may not act for anyone; a user's token ignores the header.
    async with hub_service.client(hub.other_service_token) as c:
        r = await c.get("me", headers=acting)
        assert r.status_code == 403 and "custom:allotment:spawn" in r.json()["detail"]
    async with hub_service.client(hub.token("erin")) as c:
        assert (await c.get("me", headers=acting)).json()["name"] == "erin"
    # An administrator's token holds every scope but the spawner's.
    async with hub_service.client(hub.token("hubadmin")) as c:
        assert (await c.get("me", headers=acting)).json()["name"] == "hubadmin"
