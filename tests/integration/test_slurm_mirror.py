"""Policy mirroring into a real Slurm's accounting: the tree applied and read back with
``sacctmgr``, idempotent, one change per change, an account with usage archived (and refusing
jobs) rather than deleted, drift made by hand reported, limits a direct ``sbatch`` cannot
overrun, and the controller's mirror catching up with changes made through the API."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from allotment.backends.local.posix import PosixAccounts
from allotment.clock import SystemClock
from allotment.controller.slurm_mirror import SlurmMirror
from allotment.db.engine import Database
from allotment.installation import installation_of
from tests.support.hub import free_port
from tests.support.process import allot_serve, clean_env
from tests.support.service import ROOT, Service, running_service
from tests.support.slurm import SlurmCluster

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="runs jobs as other POSIX accounts and sacctmgr as root"
)


@pytest.fixture
async def users() -> dict[str, str]:
    """alice, bob and dean as the POSIX accounts their jobs run as (made before Slurm sees
    them: slurmctld resolves a user when its association is added)."""
    accounts = PosixAccounts(create=True)
    return {name: (await accounts.resolve(name)).name for name in ("alice", "bob", "dean")}


def policy(cluster: SlurmCluster, root: str, **change: Any) -> str:
    """A policy on the test cluster: ``root`` > lab > proj, alice a member of lab, bob of proj
    (each test its own root, so tests on the one cluster never meet)."""
    accounts: dict[str, Any] = {
        root: {"shares": 60, "managers": ["dean"]},
        "lab": {"parent": root, "shares": 40, "members": ["alice"]},
        "proj": {"parent": "lab", "members": ["bob"]},
    }
    accounts = {f"{root}-{k}" if k != root else k: v for k, v in accounts.items()}
    accounts[f"{root}-lab"]["parent"] = root
    accounts[f"{root}-proj"]["parent"] = f"{root}-lab"
    doc: dict[str, Any] = {
        "slurm": {"conf": str(cluster.conf)},
        "accounts": accounts,
        "pools": {
            "cluster": {
                "backend": "slurm",
                "partition": "main",
                "nodes": [{"name": n, "cpus": 2, "memory": "4G"} for n in cluster.nodes],
                "rates": {"cpu": 1.0, "memory": 0.0},
            }
        },
    }
    for key, value in change.items():
        doc[key] = value
    return json.dumps(doc)


@pytest.fixture
async def service(database_url: str, tmp_path: Path) -> AsyncIterator[Service]:
    async with running_service(database_url, tmp_path, policy_text='{"accounts": {}}') as s:
        yield s


def root_name() -> str:
    return "m" + uuid.uuid4().hex[:6]


async def apply(service: Service, text: str, dry_run: bool = False) -> list[str]:
    async with service.admin() as c:
        r = await c.put("policy", json={"text": text, "filename": "p.json", "dry_run": dry_run})
    assert r.status_code == 200, r.text
    return [line for line in r.json()["changes"] if line.startswith("slurm: ")]


def tree(cluster: SlurmCluster, root: str) -> list[str]:
    """`sacctmgr list assoc tree` of ``root``'s subtree: account (indented by depth), user,
    share."""
    out = cluster.run(
        "sacctmgr", "-P", "-n", "list", "assoc", "tree", f"cluster={cluster.cluster}",
        "format=account,user,share",
    )  # fmt: skip
    return [line for line in out.splitlines() if line.strip().startswith(root)]


def sbatch(cluster: SlurmCluster, user: str, account: str, *args: str) -> str:
    return cluster.run(
        "sbatch", "--parsable", "-A", account, "-D", "/var/tmp", "-o", "/dev/null", *args,
        user=user,
    ).strip()  # fmt: skip


def reason(cluster: SlurmCluster, job: str, timeout: float = 15) -> str:
    """The job's state and Slurm's reason, once it has one."""
    deadline = time.monotonic() + timeout
    got = ""
    while time.monotonic() < deadline:
        got = cluster.run("squeue", "-h", "-j", job, "-o", "%T %r").strip()
        if got and not got.endswith("None"):
            return got
        time.sleep(0.3)
    return got


async def test_apply_mirrors_the_tree_once_and_a_change_of_shares_as_one_change(
    slurm_cluster: SlurmCluster, service: Service, users: dict[str, str]
) -> None:
    root = root_name()
    text = policy(slurm_cluster, root)
    dry = await apply(service, text, dry_run=True)
    assert f"slurm: add account {root} (parent root, fairshare 60)" in dry
    assert tree(slurm_cluster, root) == []  # a dry run changes nothing in Slurm
    done = await apply(service, text)
    lab, proj = f"{root}.{root}-lab", f"{root}.{root}-lab.{root}-proj"
    alice, bob, dean = users["alice"], users["bob"], users["dean"]
    assert done == [
        f"slurm: add account {root} (parent root, fairshare 60)",
        f"slurm: add account {lab} (parent {root}, fairshare 40)",
        f"slurm: add account {proj} (parent {lab}, fairshare 1)",
        f"slurm: add user {alice} to {lab}",
        f"slurm: add user {bob} to {proj}",
        # dean manages the root: he may charge everything below it, as in Allotment.
        f"slurm: add user {dean} to {root}",
        f"slurm: add user {dean} to {lab}",
        f"slurm: add user {dean} to {proj}",
    ]
    assert tree(slurm_cluster, root) == [
        f" {root}||60",
        f"  {root}|{dean}|1",
        f"  {lab}||40",
        f"   {lab}|{alice}|1",
        f"   {lab}|{dean}|1",
        f"   {proj}||1",
        f"    {proj}|{bob}|1",
        f"    {proj}|{dean}|1",
    ]
    # The same policy again: nothing to do, in Allotment or in Slurm.
    assert await apply(service, text) == []
    changed = json.loads(text)
    changed["accounts"][f"{root}-lab"]["shares"] = 25
    assert await apply(service, json.dumps(changed)) == [f"slurm: set fairshare of {lab} 40 → 25"]
    assert f"  {lab}||25" in tree(slurm_cluster, root)


async def test_an_account_with_usage_is_archived_and_refuses_new_jobs(
    slurm_cluster: SlurmCluster, service: Service, users: dict[str, str]
) -> None:
    root = root_name()
    text = policy(slurm_cluster, root)
    await apply(service, text)
    lab, proj = f"{root}.{root}-lab", f"{root}.{root}-lab.{root}-proj"
    job = sbatch(slurm_cluster, users["bob"], proj, "--wrap", "true")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # sacct lags squeue a little
        seen = slurm_cluster.run("sacct", "-a", "-X", "-n", "-P", "-j", job, "-o", "account")
        if seen.strip() == proj:
            break
        time.sleep(0.3)

    # proj (with a job) and lab (without) both leave the policy.
    smaller = json.loads(text)
    del smaller["accounts"][f"{root}-proj"], smaller["accounts"][f"{root}-lab"]
    done = await apply(service, json.dumps(smaller))
    assert f"slurm: archive account {proj} (it has usage)" in done
    # lab holds the archived proj: it stays, archived too; nothing is deleted.
    assert f"slurm: archive account {lab} (an account below it has usage)" in done
    assert not [line for line in done if "remove account" in line]
    with pytest.raises(subprocess.CalledProcessError) as refused:
        sbatch(slurm_cluster, users["bob"], proj, "--wrap", "true")
    assert "policy" in refused.value.stderr.lower() or "limit" in refused.value.stderr.lower()
    # An account that never ran anything is deleted.
    extra = json.loads(text)
    extra["accounts"][f"{root}-tmp"] = {"parent": root}
    await apply(service, json.dumps(extra))
    assert f"slurm: remove account {root}.{root}-tmp" in await apply(service, json.dumps(smaller))
    accounts = slurm_cluster.run("sacctmgr", "-P", "-n", "show", "assoc", "format=account")
    assert f"{root}.{root}-tmp" not in accounts.split()


async def test_a_change_made_by_hand_in_slurm_is_drift(
    slurm_cluster: SlurmCluster, service: Service, users: dict[str, str], database_url: str
) -> None:
    root = root_name()
    await apply(service, policy(slurm_cluster, root))
    lab = f"{root}.{root}-lab"
    async with service.admin() as c:
        r = await c.get("policy/slurm")
    assert r.status_code == 200, r.text
    assert r.json()["in_sync"] is True, r.json()
    slurm_cluster.run(
        "sacctmgr", "-i", "modify", "account", "where", f"name={lab}",
        f"cluster={slurm_cluster.cluster}", "set", "fairshare=3", "GrpTRES=cpu=1",
    )  # fmt: skip
    slurm_cluster.run(
        "sacctmgr", "-i", "delete", "user", "where", f"name={users['alice']}", f"account={lab}"
    )
    async with service.admin() as c:
        drift = (await c.get("policy/slurm")).json()
    assert drift["in_sync"] is False
    assert drift["accounts"] == [
        f"set fairshare of {lab} 3 → 40; set GrpTRES of {lab} cpu=1 → none",
        f"add user {users['alice']} to {lab}",
    ]
    assert drift["pools"] == []
    # The controller's mirror undoes it on its next pass, and then has nothing to do.
    db = Database(database_url)
    try:
        mirror = SlurmMirror(db, SystemClock(), installation_of(None, service.data_dir))
        assert await mirror.sync_once() == drift["accounts"]
        assert await mirror.sync_once() == []
    finally:
        await db.dispose()


async def test_the_mirror_follows_changes_made_through_the_api(
    slurm_cluster: SlurmCluster, service: Service, users: dict[str, str], database_url: str
) -> None:
    root = root_name()
    await apply(service, policy(slurm_cluster, root))
    lab = f"{root}.{root}-lab"
    db = Database(database_url)
    mirror = SlurmMirror(
        db, SystemClock(), installation_of(None, service.data_dir), check_interval=0.2
    )
    task = asyncio.create_task(mirror.run())
    try:
        async with service.admin() as c:
            r = await c.patch(f"accounts/{root}/{root}-lab", json={"shares": 7})
            assert r.status_code == 200, r.text
            r = await c.delete(f"accounts/{root}/{root}-lab/members/alice")
            assert r.status_code in (204, 409), r.text
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and f"  {lab}||7" not in tree(slurm_cluster, root):
            await asyncio.sleep(0.2)
        assert f"  {lab}||7" in tree(slurm_cluster, root)
    finally:
        task.cancel()
        await db.dispose()


async def test_sbatch_outside_allotment_cannot_overrun_mirrored_limits(
    slurm_cluster: SlurmCluster, service: Service, users: dict[str, str]
) -> None:
    root = root_name()
    lab, proj = f"{root}-lab", f"{root}-proj"
    text = policy(
        slurm_cluster,
        root,
        allocations=[
            {
                "account": lab,
                "pool": "cluster",
                "quota": {"cpus": 1, "memory": "1G"},
                "borrowing_limit": {"cpus": 0, "memory": 0},
            },
            {"account": proj, "pool": "cluster", "budget": {"amount": 0.001}},
        ],
    )
    doc = json.loads(text)
    doc["slurm"]["mirror_budgets"] = True
    done = await apply(service, json.dumps(doc))
    s_lab, s_proj = f"{root}.{lab}", f"{root}.{lab}.{proj}"
    assert any(f"add account {s_lab} " in line and "GrpTRES cpu=1" in line for line in done)
    assert any(f"add account {s_proj} " in line and "GrpTRESMins" in line for line in done)
    jobs = []
    try:
        # Two CPUs in lab, whose allocation caps it at one: Slurm holds it.
        jobs.append(sbatch(slurm_cluster, users["alice"], s_lab, "-c", "2", "--wrap", "sleep 30"))
        assert reason(slurm_cluster, jobs[-1]) == "PENDING AssocGrpCpuLimit"
        # proj's budget (a thousandth of a credit) buys no CPU-minute: Slurm holds its work.
        jobs.append(sbatch(slurm_cluster, users["bob"], s_proj, "-t", "1", "--wrap", "true"))
        assert reason(slurm_cluster, jobs[-1]) == "PENDING AssocGrpCPUMinutesLimit"
    finally:
        if jobs:
            slurm_cluster.run("scancel", *jobs, check=False)


def allot(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "allotment", *args],
        env=clean_env(COLUMNS="200", HOME="/nonexistent", ALLOTMENT_SEARCH_PATH="", **env),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


async def test_allot_config_check_slurm_and_apply_dry_run(
    slurm_cluster: SlurmCluster, tmp_path: Path, users: dict[str, str]
) -> None:
    root = root_name()
    file = tmp_path / "policy.yaml"
    file.write_text(policy(slurm_cluster, root))
    port = free_port()
    data = tmp_path / "data"
    env = {"ALLOTMENT_URL": f"http://127.0.0.1:{port}/services/allotment/"}
    with allot_serve(
        port, clean_env(ALLOTMENT_DATA_DIR=str(data)), "--no-controller", policy=str(file)
    ):
        env["ALLOTMENT_DATA_DIR"] = str(data)
        # Served without a controller: nothing has mirrored the policy yet.
        r = allot("config", "check", "--slurm", env=env)
        assert r.returncode == 1, r.stderr
        assert f"add account {root} (parent root, fairshare 60)" in r.stdout
        r = allot("config", "apply", str(file), "--dry-run", env=env)
        assert r.returncode == 0, r.stderr
        assert f"slurm: add account {root} (parent root, fairshare 60)" in r.stdout
        assert "dry run: nothing was changed" in r.stdout
        r = allot("config", "apply", str(file), env=env)
        assert r.returncode == 0, r.stderr
        assert f"slurm: add account {root}.{root}-lab (parent {root}, fairshare 40)" in r.stdout
        r = allot("config", "check", "--slurm", env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "matches the policy in force" in r.stdout
        slurm_cluster.run(
            "sacctmgr", "-i", "modify", "account", "where", f"name={root}",
            f"cluster={slurm_cluster.cluster}", "set", "fairshare=9",
        )  # fmt: skip
        r = allot("config", "check", str(file), "--slurm", env=env)
        assert r.returncode == 1
        assert f"{file} is valid" in r.stdout
        assert f"set fairshare of {root} 9 → 60" in r.stdout
