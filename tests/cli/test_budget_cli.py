"""`allot budget` through a real `allot serve` over HTTP: the policy's budgets listed with
what they spent, a budget set and shown again, and a wrong one explained with exit code 1."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.cli.test_cli import allot
from tests.support.hub import free_port
from tests.support.process import allot_serve, clean_env


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    data = tmp_path_factory.mktemp("budgets")
    port = free_port()
    with allot_serve(port, clean_env(ALLOTMENT_DATA_DIR=str(data)), "--no-controller"):
        yield {
            "ALLOTMENT_URL": f"http://127.0.0.1:{port}/services/allotment/",
            "ALLOTMENT_DATA_DIR": str(data),
        }


def test_budgets_are_shown_set_and_shown_again(served: dict[str, str]) -> None:
    r = allot("budget", "show", "--json", env=served)
    assert r.returncode == 0, r.stderr
    found = {(b["account"], b["pool"]): b for b in json.loads(r.stdout)}
    assert found[("physics/lab-a", "workstation")]["amount"] == 2000
    assert found[("physics/lab-a", "gpu")]["period"] == "quarter"
    r = allot(
        "budget", "set", "lab-b", "--amount", "1500", "--pool", "workstation",
        "--grace", "5m", env=served,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "physics/lab-b (workstation): 1,500.00" in r.stdout and "per month" in r.stdout
    r = allot("budget", "show", "--account", "lab-b", env=served)
    assert r.returncode == 0, r.stderr
    assert "physics/lab-b" in r.stdout and "1,500.00" in r.stdout and "a manager" in r.stdout
    assert "physics/lab-a" not in r.stdout


def test_a_wrong_budget_is_explained(served: dict[str, str]) -> None:
    r = allot("budget", "set", "lab-z", "--amount", "1", env=served)
    assert r.returncode == 1 and "no account 'lab-z'" in r.stderr
    r = allot("budget", "set", "lab-b", "--amount", "1", "--step-down", "nope", env=served)
    assert r.returncode == 1 and "profile 'nope', which does not exist" in r.stderr
