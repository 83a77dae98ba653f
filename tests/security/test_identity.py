"""Finding 11.2: identities cannot be borrowed.

A hub user whose name equals a local account ran as that account, and the default shared-
password login accepts any name: anyone could become any local user. Mapping onto existing
accounts is now the policy's explicit choice (``identity.existing_accounts``), within a uid
range and groups, and never onto system accounts, services' accounts or accounts Allotment made
for another hub user. The headless admin's identity is a name JupyterHub never gives a user.
Real POSIX accounts (``useradd``); the admin's namespace against a real JupyterHub, on both
databases.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import pwd
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import create_async_engine

from allotment.backends.local.posix import (
    CREATION_LOCK,
    PosixAccounts,
    escape,
    legacy_unix_name,
    refusal,
    unix_name,
)
from allotment.client import AsyncAllotmentClient
from allotment.config.models import ExistingAccountsSpec
from allotment.db.tables import WORKLOADS
from tests.support.hub import Hub, free_port
from tests.support.process import allot_serve, clean_env
from tests.support.service import BASE, Service
from tests.support.service import ROOT as REPO

ROOT = os.geteuid() == 0
root_only = pytest.mark.skipif(not ROOT, reason="needs root: POSIX accounts")


def _useradd(name: str, *args: str) -> None:
    if name not in {e.pw_name for e in pwd.getpwall()}:
        subprocess.run(["/usr/sbin/useradd", "--no-create-home", *args, "--", name], check=True)


@pytest.fixture(scope="module")
def locals_() -> Iterator[None]:
    """Existing accounts as a PAM/LDAP site has them: a researcher, one in a group, a service."""
    subprocess.run(["/usr/sbin/groupadd", "-f", "allot-researchers"], check=True)
    _useradd("allotvictim", "--shell", "/bin/bash")
    _useradd("allotgrouped", "--shell", "/bin/bash", "--groups", "allot-researchers")
    _useradd("allotservice", "--shell", "/usr/sbin/nologin")
    yield


async def _resolve(hub_name: str, existing: ExistingAccountsSpec | None = None) -> str:
    return (await PosixAccounts(create=True, existing=existing).resolve(hub_name)).name


@root_only
async def test_by_default_no_hub_user_runs_as_an_existing_account(locals_: None) -> None:
    for name in ("allotvictim", "allotgrouped", "daemon", "nobody", "root"):
        assert await _resolve(name) == unix_name(name)
        made = pwd.getpwnam(unix_name(name))
        assert made.pw_gecos.startswith("allotment ")
        assert made.pw_uid >= 1000


@root_only
async def test_existing_accounts_are_used_only_as_the_policy_says(locals_: None) -> None:
    anyone = ExistingAccountsSpec()
    assert await _resolve("allotvictim", anyone) == "allotvictim"
    # Outside the uid range, not in a named group: an account of Allotment's own instead.
    uid = pwd.getpwnam("allotvictim").pw_uid
    assert await _resolve("allotvictim", ExistingAccountsSpec(uid_min=uid + 1)) == unix_name(
        "allotvictim"
    )
    grouped = ExistingAccountsSpec(groups=["allot-researchers"])
    assert await _resolve("allotgrouped", grouped) == "allotgrouped"
    assert await _resolve("allotvictim", grouped) == unix_name("allotvictim")
    # System accounts, a service's account, nobody: never.
    for name in ("daemon", "nobody", "allotservice"):
        assert await _resolve(name, anyone) == unix_name(name)


@root_only
async def test_an_account_allotment_made_for_one_hub_user_never_runs_another(
    locals_: None,
) -> None:
    made = await _resolve("alice")
    assert made == "jupyter-alice"
    # A hub user literally named "jupyter-alice", on a site that maps existing accounts.
    assert await _resolve("jupyter-alice", ExistingAccountsSpec()) == unix_name("jupyter-alice")
    assert unix_name("jupyter-alice") != "jupyter-alice"
    # Another installation on the machine may use it for the same hub user.
    assert await _resolve("alice") == "jupyter-alice"


@pytest.mark.jupyterhub
async def test_no_hub_user_can_take_the_admins_identity(hub_service: Service, hub: Hub) -> None:
    async with hub_service.admin() as admin:
        me = (await admin.get("me")).json()
        created = await admin.post(
            "workloads",
            json={"profile": "small", "account": "lab-a", "command": ["true"]},
        )
    assert created.status_code == 201, created.text
    wid = created.json()["id"]
    assert me["name"].startswith("admin-token/")
    # A hub user named as the admin's identity used to be named.
    borrower = "admin-token:" + me["name"].removeprefix("admin-token/")
    r = hub._api("POST", f"/users/{borrower}")
    assert r.status_code in (201, 409), r.text
    async with hub_service.client(hub.token(borrower)) as c:
        assert (await c.get("me")).json()["name"] == borrower
        assert (await c.get(f"workloads/{wid}")).status_code == 404
        assert (await c.post(f"workloads/{wid}/cancel")).status_code == 404
        assert (await c.get("workloads")).json()["items"] == []


async def _ran_as_own_name(service: Service, database_url: str) -> str:
    """A workload of the admin's identity recorded as run by the POSIX account of that same
    name, as every version before ``identity.existing_accounts`` did for such users."""
    async with service.admin() as admin:
        me = (await admin.get("me")).json()["name"]
        r = await admin.post(
            "workloads", json={"profile": "small", "account": "lab-a", "command": ["true"]}
        )
    assert r.status_code == 201, r.text
    engine = create_async_engine(database_url)
    async with engine.begin() as conn:
        await conn.execute(
            update(WORKLOADS)
            .where(WORKLOADS.c.id == r.json()["id"])
            .values(placement={"user": me, "uid": 1001})
        )
    await engine.dispose()
    return str(me)


async def test_a_policy_that_drops_existing_accounts_says_whom_it_moves(
    service: Service, database_url: str
) -> None:
    """The upgrade path: a site whose users ran as their existing accounts is told, at apply
    (and so at `allot config check`), that without `identity.existing_accounts` they will not."""
    name = await _ran_as_own_name(service, database_url)
    text = (REPO / "examples/department.yaml").read_text()
    async with service.admin() as admin:
        r = await admin.put("policy", json={"text": text, "dry_run": True})
        kept = await admin.put(
            "policy",
            json={
                "text": text + "\nidentity: {existing_accounts: {uid_min: 1000}}\n",
                "dry_run": True,
            },
        )
    assert r.status_code == 200, r.text
    [warning] = r.json()["warnings"]
    assert f"hub users {name} ran workloads as the existing POSIX accounts" in warning
    assert "identity: {existing_accounts:" in warning
    assert kept.json()["warnings"] == []


def test_allot_config_check_warns_from_the_services_database(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()
    with allot_serve(port, clean_env(ALLOTMENT_DATA_DIR=str(data)), "--no-controller"):
        env = clean_env(
            ALLOTMENT_URL=f"http://127.0.0.1:{port}/services/allotment/",
            ALLOTMENT_DATA_DIR=str(data),
            COLUMNS="200",
        )
        token = (data / "admin-token").read_text().strip()
        created = httpx.post(
            env["ALLOTMENT_URL"] + "api/workloads",
            json={"profile": "small", "command": ["true"], "account": "lab-b"},
            headers={"Authorization": f"token {token}"},
        )
        assert created.status_code == 201, created.text
        me = httpx.get(env["ALLOTMENT_URL"] + "api/me", headers={"Authorization": f"token {token}"})
        name = me.json()["name"]
        with sqlite3.connect(data / "allotment.sqlite") as db:
            db.execute(
                "UPDATE workloads SET placement = ? WHERE id = ?",
                (json.dumps({"user": name}), created.json()["id"]),
            )
        policy = REPO / "examples/department.yaml"
        check = [sys.executable, "-m", "allotment", "config", "check", str(policy)]
        r = subprocess.run(check, env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "is valid" in r.stdout
        assert f"warning: hub users {name} ran workloads as the existing POSIX" in r.stderr
        own = tmp_path / "kept.yaml"
        own.write_text(policy.read_text() + "\nidentity: {existing_accounts: {uid_min: 1000}}\n")
        r = subprocess.run([*check[:-1], str(own)], env=env, capture_output=True, text=True)
        assert r.returncode == 0 and "warning" not in r.stderr, r.stderr


def test_an_existing_account_must_carry_exactly_the_hub_users_name() -> None:
    """Review finding: name services that match loosely (sssd: case, user@domain) could hand
    hub users ``Alice`` and ``alice@dom`` the same account ``alice``."""
    alice = pwd.struct_passwd(("alice", "x", 2001, 2001, "", "/home/alice", "/bin/bash"))
    rule = ExistingAccountsSpec()
    assert refusal(alice, "alice", rule) is None
    for other in ("Alice", "alice@dom"):
        assert refusal(alice, other, rule) == "its name 'alice' is not exactly the hub user's"


def test_long_hub_names_get_64_bits_of_hash() -> None:
    """Review finding: 32 bits let an attacker find a hub name whose account takes a known
    future user's name (a collision turned up after ~18,000 names)."""
    a, b = "alice.smith@example.org2362", "alice.smith@example.org17874"
    assert legacy_unix_name(a) == legacy_unix_name(b)  # the collision the review found
    assert unix_name(a) != unix_name(b)
    assert len(unix_name(a)) <= 32 and unix_name(a).endswith(
        "-" + hashlib.sha256(a.encode()).hexdigest()[:16]
    )


@root_only
async def test_an_account_made_under_the_old_short_hash_stays_its_users(locals_: None) -> None:
    hub_name = "legacy.user.with.a.long.name@example.org"
    old = legacy_unix_name(hub_name)
    if old not in {e.pw_name for e in pwd.getpwall()}:
        subprocess.run(
            [
                "/usr/sbin/useradd",
                "--no-create-home",
                "--comment",
                "allotment " + escape(hub_name),
                "--",
                old,
            ],
            check=True,
        )
    assert await _resolve(hub_name) == old
    # Another hub user whose legacy name collides gets no use of it: the mark is not theirs.
    assert pwd.getpwnam(old).pw_gecos == "allotment " + escape(hub_name)


@root_only
async def test_two_installations_creating_one_account_at_once_both_get_it() -> None:
    """Found running the suite in two processes: of four ``useradd`` of one new name at once,
    some failed ("already exists") and the others succeeded, each replacing the last's entry
    with a new uid (shadow-utils checks the name before it locks /etc/passwd), so that what
    the first made (its home) belonged to a uid nobody had, for a later account to inherit.
    Every creation now holds a machine-wide lock (one that no user may open) and looks again
    under it. Four PosixAccounts are four installations: each its own lock file descriptor."""
    name = unix_name("racer")
    subprocess.run(["/usr/sbin/userdel", "--remove", name], capture_output=True, check=False)
    many = await asyncio.gather(*(PosixAccounts(create=True).resolve("racer") for _ in range(4)))
    assert {a.name for a in many} == {name}
    assert {a.uid for a in many} == {pwd.getpwnam(name).pw_uid}
    assert [e.pw_name for e in pwd.getpwall()].count(name) == 1
    lock = os.stat(CREATION_LOCK)
    assert (lock.st_uid, stat.S_IMODE(lock.st_mode)) == (0, 0o600)


@pytest.mark.jupyterhub
async def test_the_spawner_names_any_hub_user_exactly_and_nothing_else(
    hub_service: Service, hub: Hub
) -> None:
    """Review finding: the spawner's client could not send a non-ASCII hub name at all, and the
    service read header bytes as Latin-1 (``café`` became ``cafÃ©``) and let NUL and control
    characters into the users table."""
    r = hub._api("POST", "/users/café")
    assert r.status_code in (201, 409), r.text
    spawner = AsyncAllotmentClient(
        BASE.removesuffix("api/"),
        hub.spawner_token,
        acting_for="café",
        transport=httpx.ASGITransport(app=hub_service.app),
    )
    async with spawner:
        assert (await spawner._call("GET", "me"))["name"] == "café"
    async with hub_service.client(hub.spawner_token) as c:
        for bad in ("a%00b", "a%09b", "%20bob", "%ff"):
            r = await c.get("me", headers={"X-Allotment-User": bad})
            assert r.status_code == 422, (bad, r.text)
