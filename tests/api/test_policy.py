"""Applying a policy: idempotent, says what changed, never deletes history."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection

from allotment.db.engine import Database
from allotment.db.tables import Base
from tests.support.service import ROOT, Service

ONE_BOX = (ROOT / "examples/one-box.yaml").read_text()
DEPARTMENT = (ROOT / "examples/department.yaml").read_text()


async def apply(service: Service, text: str, dry_run: bool = False) -> dict[str, object]:
    async with service.admin() as c:
        r = await c.put("policy", json={"text": text, "filename": "new.yaml", "dry_run": dry_run})
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_applying_the_same_policy_twice_changes_nothing(service: Service) -> None:
    first = await apply(service, DEPARTMENT)
    assert first["changes"] == []  # the service applied it at start-up
    async with service.admin() as c:
        assert (await c.get("policy")).json()["version"] == first["version"]


async def test_removed_accounts_with_history_are_archived(service: Service) -> None:
    async with service.admin() as c:
        r = await c.post(
            "workloads", json={"profile": "small", "command": ["true"], "account": "proj-x"}
        )
        assert r.status_code == 201
    result = await apply(service, ONE_BOX)
    changes = result["changes"]
    assert isinstance(changes, list)
    assert "- account physics/lab-a/proj-x archived (its history is kept)" in changes
    # Its ancestors stay (archived) so the archived subtree is whole; the rest goes.
    assert "- account physics/lab-a archived (its history is kept)" in changes
    assert "- account physics/lab-b removed" in changes
    assert "- account physics/lab-a/proj-y removed" in changes
    assert "- profile small archived (its history is kept)" not in changes  # still in one-box
    async with service.admin() as c:
        live = [a["path"] for a in (await c.get("accounts")).json()["items"]]
        every = (await c.get("accounts", params={"archived": True})).json()["items"]
        workloads = (await c.get("workloads")).json()["items"]
    assert live == ["lab"]
    assert {a["path"]: a["archived"] for a in every} == {
        "lab": False,
        "physics": True,
        "physics/lab-a": True,
        "physics/lab-a/proj-x": True,
    }
    assert workloads[0]["account"] == "physics/lab-a/proj-x"
    # And back: the archived accounts are restored, not duplicated.
    again = await apply(service, DEPARTMENT)
    assert "~ account physics/lab-a/proj-x: restored from archive" in again["changes"]  # type: ignore[operator]


async def test_dry_run_changes_nothing(service: Service) -> None:
    result = await apply(service, ONE_BOX, dry_run=True)
    assert result["version"] is None and result["changes"]
    async with service.admin() as c:
        assert len((await c.get("accounts")).json()["items"]) == 5


async def test_memberships_added_through_the_api_survive_an_apply(service: Service) -> None:
    async with service.admin() as c:
        r = await c.put("accounts/lab-b/members/zoe", json={"role": "member"})
        assert r.status_code == 200
    await apply(service, DEPARTMENT.replace("members: [erin]", "members: [erin, yan]"))
    async with service.admin() as c:
        members = (await c.get("accounts/lab-b/members")).json()["items"]
        managers = (await c.get("accounts/lab-b/members", params={"role": "manager"})).json()
        assert [m["user"] for m in managers["items"]] == ["dave"]
        page = (await c.get("accounts/lab-b/members", params={"limit": 2})).json()
        assert [m["user"] for m in page["items"]] == ["dave", "erin"]
        assert page["next_cursor"] == "erin"
    assert {(m["user"], m["role"], m["origin"]) for m in members} == {
        ("dave", "manager", "policy"),
        ("erin", "member", "policy"),
        ("yan", "member", "policy"),
        ("zoe", "member", "api"),
    }


async def test_a_broken_policy_is_refused_with_its_lines(service: Service) -> None:
    async with service.admin() as c:
        r = await c.put(
            "policy", json={"text": "accounts:\n  a: {parent: b}\n", "filename": "x.yaml"}
        )
    assert r.status_code == 422
    assert "x.yaml:2: accounts.a.parent: unknown parent account 'b'" in r.json()["detail"]


async def test_the_stored_policy_holds_no_service_secrets(service: Service) -> None:
    text = "service:\n  database_url: postgresql://u:hunter2@db/x\n" + DEPARTMENT
    await apply(service, text)
    async with service.admin() as c:
        stored = (await c.get("policy")).json()
    assert "service" not in stored["document"]
    assert "hunter2" not in str(stored)


def _diff(conn: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))


async def test_migrations_match_the_models(database_url: str, tmp_path: Path) -> None:
    db = Database(database_url)
    await db.upgrade()
    await db.upgrade()  # a second upgrade is a no-op
    async with db.writer.connect() as conn:
        assert await conn.run_sync(_diff) == []
    await db.dispose()


def test_sqlite_files_are_private(tmp_path: Path) -> None:
    Database(f"sqlite+aiosqlite:///{tmp_path / 'new' / 'a.sqlite'}")
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "new" / "a.sqlite").stat().st_mode & 0o777 == 0o600


async def test_a_managers_share_edit_survives_an_unchanged_policy(service: Service) -> None:
    async with service.admin() as c:
        r = await c.patch("accounts/physics/lab-a/proj-x", json={"shares": 7})
        assert r.status_code == 200
    again = await apply(service, DEPARTMENT)  # the file still says what it said before
    assert again["changes"] == []
    async with service.admin() as c:
        assert (await c.get("accounts/proj-x")).json()["shares"] == 7
    # When the file itself changes that account's shares, the file wins.
    edited = DEPARTMENT.replace(
        "parent: physics/lab-a\n    shares: 1", "parent: physics/lab-a\n    shares: 4"
    )
    result = await apply(service, edited)
    assert "~ account physics/lab-a/proj-x: shares 7 → 4" in result["changes"]  # type: ignore[operator]
