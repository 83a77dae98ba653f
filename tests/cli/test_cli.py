"""`allot` as a user runs it: a real `allot serve` process over HTTP, and real exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from allotment.client import DEFAULT_URL, discover, search_path
from tests.support.hub import free_port
from tests.support.process import allot_serve, clean_env

ROOT = Path(__file__).resolve().parents[2]
ALLOT = [sys.executable, "-m", "allotment"]


def allot(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # Nowhere to find a local service's admin token but the test's own $ALLOTMENT_DATA_DIR:
    # not in a home, and not where a real installation on this machine keeps one
    # (/var/lib/allotment/service after `scripts/start`, readable by root).
    base = clean_env(COLUMNS="200", HOME=str(ROOT / ".no-home"), ALLOTMENT_SEARCH_PATH="")
    return subprocess.run(
        [*ALLOT, *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_config_check_accepts_the_examples() -> None:
    r = allot("config", "check", "examples/department.yaml")
    assert r.returncode == 0, r.stderr
    assert "is valid: 5 accounts, 2 pools, 3 profiles, 3 allocations" in r.stdout


def test_config_check_lists_every_problem_and_fails(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "accounts:\n  physics: {}\n  lab-a: {parent: phsyics, shares: 2}\n"
        "pools:\n  ws: {nodes: [{name: n1, cpus: 4, memory: 8G}]}\n"
        "profiles:\n  big: {pool: ws, size: {cpus: 8, memory: 4G}}\n"
    )
    r = allot("config", "check", str(bad))
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert f"{bad}:3: accounts.lab-a.parent: unknown parent account 'phsyics'" in lines
    assert (
        f"{bad}:7: profiles.big.size: asks for 8 CPUs, 4G, more than any node of pool 'ws' has"
        in lines
    )
    assert any("did you mean 'physics'?" in line for line in lines)
    assert "2 problems" in r.stderr


def test_config_show_fills_defaults() -> None:
    r = allot("config", "show", "examples/one-box.yaml", "--json")
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["accounts"]["lab"]["shares"] == 1
    assert shown["profiles"]["small"]["max_runtime"] == "8h"


def test_config_schema_is_json_schema() -> None:
    schema = json.loads(allot("config", "schema").stdout)
    assert schema["title"] == "Policy"
    assert "accounts" in schema["properties"]


def test_no_token_is_explained() -> None:
    r = allot("whoami")
    assert r.returncode == 1
    assert "no token" in r.stderr


def test_the_admin_token_is_looked_for_where_the_search_path_says(tmp_path: Path) -> None:
    installed = tmp_path / "installed"  # a local service's data directory, as `allot up` makes
    installed.mkdir()
    (installed / "admin-token").write_text("a-token\n")
    # Retrying for 2 s (not 30) is enough to show it tried the token it found.
    env = {"ALLOTMENT_URL": f"http://127.0.0.1:{free_port()}/", "ALLOTMENT_RETRY_SECONDS": "2"}
    found = allot("whoami", env={**env, "ALLOTMENT_SEARCH_PATH": f"{tmp_path}/none:{installed}"})
    assert "Cannot reach Allotment" in found.stderr  # it had a token, and tried it
    assert "no token" in allot("whoami", env=env).stderr  # empty: looked nowhere


def test_discover_looks_only_where_it_is_told(tmp_path: Path) -> None:
    (tmp_path / "admin-token").write_text("a-token\n")
    assert discover([], {}) == (DEFAULT_URL, None)
    assert discover([tmp_path / "none", tmp_path], {}) == (DEFAULT_URL, "a-token")
    assert discover([tmp_path], {"ALLOTMENT_TOKEN": "t"}) == (DEFAULT_URL, "t")
    assert search_path({"ALLOTMENT_SEARCH_PATH": ""}) == []
    assert search_path({"ALLOTMENT_DATA_DIR": "/d", "ALLOTMENT_SEARCH_PATH": "/a:/b"}) == [
        Path("/d"),
        Path("/a"),
        Path("/b"),
    ]
    assert Path("/var/lib/allotment/service") in search_path({})  # the CLI's default


def test_unreachable_service_is_explained() -> None:
    r = allot(
        "whoami",
        env={
            "ALLOTMENT_URL": f"http://127.0.0.1:{free_port()}/",
            "ALLOTMENT_TOKEN": "x",
            "ALLOTMENT_RETRY_SECONDS": "2",
        },
    )
    assert r.returncode == 1
    assert "Cannot reach Allotment" in r.stderr and "retrying for up to 2 s" in r.stderr


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    data = tmp_path_factory.mktemp("served")
    port = free_port()
    # The API alone: these tests list and cancel workloads, which must stay pending.
    with allot_serve(port, clean_env(ALLOTMENT_DATA_DIR=str(data)), "--no-controller"):
        yield {
            "ALLOTMENT_URL": f"http://127.0.0.1:{port}/services/allotment/",
            "ALLOTMENT_DATA_DIR": str(data),
        }
    assert (data / "admin-token").stat().st_mode & 0o777 == 0o600


def test_whoami_with_the_admin_token_file(served: dict[str, str]) -> None:
    r = allot("whoami", "--json", env=served)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["admin"] is True


def test_accounts_tree_and_json(served: dict[str, str]) -> None:
    r = allot("accounts", env=served)
    assert r.returncode == 0, r.stderr
    assert "lab-a shares=2" in r.stdout and "proj-y shares=3" in r.stdout
    paths = [a["path"] for a in json.loads(allot("accounts", "--json", env=served).stdout)]
    assert paths == [
        "physics",
        "physics/lab-a",
        "physics/lab-a/proj-x",
        "physics/lab-a/proj-y",
        "physics/lab-b",
    ]


def test_workloads_and_cancel(served: dict[str, str]) -> None:
    token = Path(served["ALLOTMENT_DATA_DIR"], "admin-token").read_text().strip()
    r = httpx.post(
        served["ALLOTMENT_URL"] + "api/workloads",
        json={"profile": "small", "command": ["true"], "account": "lab-b"},
        headers={"Authorization": f"token {token}"},
    )
    wid = r.json()["id"]
    listed = json.loads(allot("workloads", "--json", "-A", "lab-b", env=served).stdout)
    assert [w["id"] for w in listed] == [wid]
    table = allot("workloads", "--state", "pending", env=served).stdout
    assert "physics/lab-b" in table and "pending" in table
    r = allot("cancel", str(wid), env=served)
    assert r.returncode == 0 and f"{wid}: stopped (cancelled by admin-token/setup)" in r.stdout
    r = allot("cancel", str(wid), env=served)
    assert r.returncode == 1 and "already stopped" in r.stderr
    r = allot("workloads", "--since", "tomorrow", env=served)
    assert r.returncode == 1 and "--since" in r.stderr


def test_config_apply_dry_run_then_apply(served: dict[str, str]) -> None:
    r = allot("config", "apply", "examples/department.yaml", env=served)
    assert r.returncode == 0 and "no changes" in r.stdout
    r = allot("config", "apply", "examples/one-box.yaml", "--dry-run", env=served)
    assert r.returncode == 0, r.stderr
    assert "+ account lab (shares 1)" in r.stdout and "dry run" in r.stdout
    shown = allot("config", "show", "--json", env=served)
    assert "physics" in json.loads(shown.stdout)["accounts"]


def test_simulate_what_if_from_history(served: dict[str, str], tmp_path: Path) -> None:
    token = Path(served["ALLOTMENT_DATA_DIR"], "admin-token").read_text().strip()
    headers = {"Authorization": f"token {token}"}
    for account, profile in [
        ("lab-a", "small"),
        ("lab-a", "small"),
        ("lab-b", "small"),
        ("lab-a", "gpu-a100"),
        ("lab-a", "gpu-a100"),
    ]:
        r = httpx.post(
            served["ALLOTMENT_URL"] + "api/workloads",
            headers=headers,
            json={"profile": profile, "account": account, "command": ["true"]},
        )
        assert r.status_code == 201, r.text
    proposed = tmp_path / "proposed.yaml"
    proposed.write_text(
        (ROOT / "examples/department.yaml")
        .read_text()
        .replace("shares: 2\n    description: Condensed", "shares: 8\n    description: Condensed")
        .replace("max_runtime: 24h", "max_runtime: 24h\n    priority: 100")
    )
    r = allot("simulate", "--from-history", "--since", "1h", "--config", str(proposed), env=served)
    assert r.returncode == 0, r.stderr
    assert "in force" in r.stdout and "proposed.yaml" in r.stdout
    assert "ran" in r.stdout and "share physics/lab-a" in r.stdout
    r = allot("simulate", "--from-history", env=served)
    assert r.returncode == 1 and "needs --config" in r.stderr
    r = allot("simulate", env=served)
    assert r.returncode == 1 and "--trace" in r.stderr
