"""Delegated administration through the API, on both databases: sub-accounts managers create,
archiving them, the audit entry every change writes, and what `allot config apply` does to
what managers made (it leaves it alone until the file itself names it).

The caller here is the headless administrator; who else may do what is
tests/security/test_delegation.py's, against a real JupyterHub.
"""

from __future__ import annotations

from typing import Any

import httpx

from tests.support.service import ROOT, Service

DEPARTMENT = (ROOT / "examples/department.yaml").read_text()


async def apply(service: Service, text: str) -> list[str]:
    async with service.admin() as c:
        r = await c.put("policy", json={"text": text, "filename": "new.yaml"})
    assert r.status_code == 200, r.text
    changes: list[str] = r.json()["changes"]
    return changes


async def create(c: httpx.AsyncClient, name: str, parent: str, **body: Any) -> dict[str, Any]:
    r = await c.post("accounts", json={"name": name, "parent": parent, **body})
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


async def audit(c: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    r = await c.get("audit", params=params)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def newest(c: httpx.AsyncClient) -> int:
    """The newest audit entry's id (the service's own apply at start wrote some)."""
    return int((await audit(c, limit=1))[0]["id"])


async def after(c: httpx.AsyncClient, mark: int, **params: Any) -> list[dict[str, Any]]:
    return [e for e in await audit(c, limit=1000, **params) if e["id"] > mark]


async def test_a_sub_account_is_created_under_its_parent_with_an_audit_entry(
    service: Service,
) -> None:
    async with service.admin() as c:
        made = await create(c, "p9", "lab-a", shares=3, description="Project nine")
        assert made == {
            "path": "physics/lab-a/p9",
            "name": "p9",
            "parent": "physics/lab-a",
            "shares": 3,
            "description": "Project nine",
            "archived": False,
            "origin": "api",
        }
        assert (await c.get("accounts/p9")).json()["path"] == "physics/lab-a/p9"
        (entry,) = await audit(c, account="physics/lab-a/p9")
    assert entry["actor"].startswith("admin-token/")
    assert (entry["action"], entry["account"], entry["target"]) == (
        "account.create",
        "physics/lab-a/p9",
        "physics/lab-a/p9",
    )
    assert entry["before"] is None
    assert entry["after"] == {"shares": 3, "description": "Project nine"}


async def test_creating_an_account_says_what_is_wrong(service: Service) -> None:
    async with service.admin() as c:
        mark = await newest(c)
        taken = await c.post("accounts", json={"name": "proj-x", "parent": "lab-b"})
        assert taken.status_code == 409
        assert "already an account named 'proj-x' (physics/lab-a/proj-x)" in taken.json()["detail"]
        missing = await c.post("accounts", json={"name": "p1", "parent": "lab-z"})
        assert missing.status_code == 404
        assert missing.json()["detail"] == "There is no account 'lab-z' that you can see."
        bad = await c.post("accounts", json={"name": "Has Space", "parent": "lab-a"})
        assert bad.status_code == 422
        assert await after(c, mark) == []  # nothing was changed, so nothing was written
        # Roots are the administrator's (a manager must name a parent).
        root = await c.post("accounts", json={"name": "chemistry"})
        assert root.status_code == 201 and root.json()["path"] == "chemistry"


async def test_every_change_to_members_and_shares_is_audited(service: Service) -> None:
    async with service.admin() as c:
        mark = await newest(c)
        assert (await c.put("accounts/lab-b/members/zoe", json={"role": "member"})).is_success
        assert (await c.put("accounts/lab-b/members/zoe", json={"role": "viewer"})).is_success
        # Saying the same again changes nothing, so it writes nothing.
        assert (await c.put("accounts/lab-b/members/zoe", json={"role": "viewer"})).is_success
        assert (await c.delete("accounts/lab-b/members/zoe")).status_code == 204
        r = await c.patch("accounts/proj-y", json={"shares": 5, "description": "Y"})
        assert r.status_code == 200
        entries = await after(c, mark)
    got = [(e["action"], e["target"], e["before"], e["after"]) for e in entries]
    assert got == [  # newest first
        (
            "account.update",
            "physics/lab-a/proj-y shares, description",
            {"shares": 3, "description": ""},
            {"shares": 5, "description": "Y"},
        ),
        ("member.remove", "zoe in physics/lab-b", {"role": "viewer"}, None),
        ("member.role", "zoe in physics/lab-b", {"role": "member"}, {"role": "viewer"}),
        ("member.add", "zoe in physics/lab-b", None, {"role": "member"}),
    ]
    assert {e["account"] for e in entries} == {"physics/lab-b", "physics/lab-a/proj-y"}


async def test_the_audit_log_pages_newest_first_and_filters_by_subtree(service: Service) -> None:
    async with service.admin() as c:
        mark = await newest(c)
        for user in ("u1", "u2", "u3"):
            await c.put("accounts/lab-a/members/" + user, json={"role": "member"})
        await c.put("accounts/lab-b/members/u4", json={"role": "member"})
        first = (await c.get("audit", params={"account": "lab-a", "limit": 2})).json()
        assert [e["target"] for e in first["items"]] == [
            "u3 in physics/lab-a",
            "u2 in physics/lab-a",
        ]
        rest = await audit(c, account="lab-a", limit=2, cursor=first["next_cursor"])
        assert rest[0]["target"] == "u1 in physics/lab-a"
        assert rest[1]["id"] < mark  # and on to the entries of the service's start
        # The institute's subtree holds both labs' entries.
        assert len(await after(c, mark, account="physics")) == 4
        bad = await c.get("audit", params={"cursor": "x"})
        assert bad.status_code == 422


async def test_archiving_keeps_what_history_refers_to_and_removes_the_rest(
    service: Service,
) -> None:
    async with service.admin() as c:
        mark = await newest(c)
        await create(c, "p9", "lab-a")
        await create(c, "p10", "lab-a")
        await create(c, "p11", "p10")
        await c.put("accounts/p9/members/bob", json={"role": "member"})
        r = await c.post(
            "workloads", json={"profile": "small", "command": ["true"], "account": "p9"}
        )
        assert r.status_code == 201
        wid = r.json()["id"]
        # The policy's accounts are the file's to remove.
        policy = await c.delete("accounts/proj-x")
        assert policy.status_code == 409
        assert "stated by the policy file" in policy.json()["detail"]
        # Not while work is waiting on it.
        busy = await c.delete("accounts/p9")
        assert busy.status_code == 409
        assert "1 workload(s) charged to 'physics/lab-a/p9' are waiting" in busy.json()["detail"]
        assert (await c.post(f"workloads/{wid}/cancel")).status_code == 200
        done = await c.delete("accounts/p9")
        assert done.json() == {"path": "physics/lab-a/p9", "outcome": "archived"}
        assert (await c.get("accounts/p9")).json()["archived"] is True
        again = await c.delete("accounts/p9")
        assert again.status_code == 409
        # An archived account takes no new work.
        refused = await c.post(
            "workloads", json={"profile": "small", "command": ["true"], "account": "p9"}
        )
        assert refused.status_code == 409
        # A parent goes after its children; one nothing refers to is removed.
        parent = await c.delete("accounts/p10")
        assert parent.status_code == 409
        assert "sub-accounts: physics/lab-a/p10/p11" in parent.json()["detail"]
        assert (await c.delete("accounts/p11")).json()["outcome"] == "removed"
        assert (await c.delete("accounts/p10")).json()["outcome"] == "removed"
        assert (await c.get("accounts/p10")).status_code == 404
        entries = await after(c, mark, account="lab-a")
    assert [(e["action"], e["target"]) for e in entries[:3]] == [
        ("account.remove", "physics/lab-a/p10"),
        ("account.remove", "physics/lab-a/p10/p11"),
        ("account.archive", "physics/lab-a/p9"),
    ]


async def test_an_apply_leaves_managers_accounts_alone_until_the_file_names_them(
    service: Service,
) -> None:
    async with service.admin() as c:
        await create(c, "p9", "lab-a", shares=3)
        await c.put("accounts/p9/members/bob", json={"role": "member"})
        await c.patch("accounts/proj-y", json={"shares": 9})
        mark = await newest(c)
    # The same file again: nothing to change (p9 is not the file's; proj-y's shares are the
    # manager's until the file changes them).
    assert await apply(service, DEPARTMENT) == []
    # A file that changes something else: p9 is still left alone, and not archived.
    other = DEPARTMENT.replace("members: [erin]", "members: [erin, yan]")
    changes = await apply(service, other)
    assert changes == ["+ member yan in physics/lab-b as member", "new policy version recorded"]
    async with service.admin() as c:
        p9 = (await c.get("accounts/p9")).json()
        assert (p9["archived"], p9["shares"], p9["origin"]) == (False, 3, "api")
        assert (await c.get("accounts/proj-y")).json()["shares"] == 9
        members = (await c.get("accounts/p9/members")).json()["items"]
        assert [(m["user"], m["origin"]) for m in members] == [("bob", "api")]
        entries = await after(c, mark)
    # The apply wrote one entry per change, and one for the version, as the admin who applied.
    # (The unchanged apply wrote nothing: it changed nothing.)
    assert [(e["action"], e["target"]) for e in entries] == [
        ("policy.apply", entries[0]["target"]),
        ("member.add", "yan in physics/lab-b"),
    ]
    assert entries[0]["target"].startswith("policy version ")
    assert entries[1]["actor"].startswith("admin-token/") and entries[1]["after"] == {
        "role": "member"
    }
    # The file comes to name p9 (elsewhere, with its own shares): it becomes the file's.
    named = other.replace("\nusers:", "\n  p9:\n    parent: lab-b\n    shares: 2\n\nusers:", 1)
    changes = await apply(service, named)
    assert (
        "~ account physics/lab-b/p9: now stated by the policy file, moved from "
        "physics/lab-a/p9, shares 3 → 2" in changes
    )
    async with service.admin() as c:
        p9 = (await c.get("accounts/p9")).json()
        assert (p9["path"], p9["shares"], p9["origin"]) == ("physics/lab-b/p9", 2, "policy")
        (entry,) = [e for e in await audit(c, account="lab-b") if e["action"] == "account.update"]
    assert entry["before"] == {"origin": "api", "path": "physics/lab-a/p9", "shares": 3}
    assert entry["after"] == {"origin": "policy", "path": "physics/lab-b/p9", "shares": 2}
    # Now the file's, it goes when the file drops it (nothing refers to it: removed).
    assert "- account physics/lab-b/p9 removed" in await apply(service, other)


async def test_managers_accounts_follow_their_parent(service: Service) -> None:
    async with service.admin() as c:
        await create(c, "p9", "proj-x")
        await create(c, "p10", "p9")
    # The file moves proj-x under lab-b: the manager's accounts below it move along.
    moved = DEPARTMENT.replace(
        "parent: physics/lab-a\n    shares: 1", "parent: lab-b\n    shares: 1"
    )
    changes = await apply(service, moved)
    assert (
        "~ account physics/lab-b/proj-x/p9: moved from physics/lab-a/proj-x/p9 with its parent"
        in changes
    )
    async with service.admin() as c:
        assert (await c.get("accounts/p10")).json()["path"] == "physics/lab-b/proj-x/p9/p10"
    # The file drops proj-x: it is kept archived (a manager's account is below it), and the
    # accounts below it are archived with it, never removed.
    dropped = DEPARTMENT.replace(
        "  proj-x:\n    parent: physics/lab-a\n    shares: 1\n    members: [bob]\n", ""
    )
    assert dropped != DEPARTMENT
    changes = await apply(service, dropped)
    assert "- account physics/lab-b/proj-x archived (its history is kept)" in changes
    assert (
        "- account physics/lab-b/proj-x/p9 archived with its parent physics/lab-b/proj-x" in changes
    )
    async with service.admin() as c:
        every = (
            await c.get("accounts", params={"archived": True, "under": "physics/lab-b"})
        ).json()
    assert {a["path"]: a["archived"] for a in every["items"]} == {
        "physics/lab-b": False,
        "physics/lab-b/proj-x": True,
        "physics/lab-b/proj-x/p9": True,
        "physics/lab-b/proj-x/p9/p10": True,
    }
    # The file names proj-x again: it is restored; the managers' accounts below it stay
    # archived until a manager asks for them again where they were.
    assert "~ account physics/lab-b/proj-x: restored from archive" in await apply(service, moved)
    async with service.admin() as c:
        assert (await c.get("accounts/p9")).json()["archived"] is True
        elsewhere = await c.post("accounts", json={"name": "p9", "parent": "lab-a"})
        assert elsewhere.status_code == 409  # the name is taken, archived or not
        back = await create(c, "p9", "proj-x", shares=4)
        assert (back["path"], back["archived"], back["shares"]) == (
            "physics/lab-b/proj-x/p9",
            False,
            4,
        )
        (entry,) = [e for e in await audit(c, account="p9") if e["action"] == "account.restore"]
    assert entry["before"] == {"archived": True, "shares": 1, "description": ""}


async def test_a_created_sub_account_is_quoted_and_offered_its_parents_profiles(
    service: Service,
) -> None:
    async with service.admin() as c:
        await create(c, "p9", "lab-a")
        quote = await c.get("quote", params={"account": "p9"})
        assert quote.status_code == 200, quote.text
        body = quote.json()
        # gpu-a100 is offered to lab-a, and so to what lies below it.
        assert {p["profile"] for p in body["profiles"]} == {"small", "gpu-a100", "gpu-node"}
        # The lab's budget on the GPU pool governs it too.
        (gpu,) = [p for p in body["profiles"] if p["profile"] == "gpu-a100"]
        assert gpu["budget"]["account"] == "physics/lab-a"
        nul = await c.post("accounts", json={"name": "p1", "parent": "lab-a\u0000"})
        assert nul.status_code == 422


async def test_a_dry_run_apply_writes_no_audit_entry(service: Service) -> None:
    async with service.admin() as c:
        mark = await newest(c)
        r = await c.put(
            "policy",
            json={"text": DEPARTMENT.replace("shares: 2", "shares: 5"), "dry_run": True},
        )
        assert r.status_code == 200 and r.json()["changes"], r.text
        assert await after(c, mark) == []
