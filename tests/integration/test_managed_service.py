"""`allot serve` as a JupyterHub-managed service: the hub starts it, tells it where to listen,
its URL prefix and the hub API, and the service then accepts the hub's user tokens."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from tests.support.hub import Hub, free_port
from tests.support.process import wait_healthy

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.jupyterhub


def test_the_hub_runs_allotment_as_a_service(tmp_path: Path) -> None:
    port = free_port()
    service = {
        "name": "allotment",
        "url": f"http://127.0.0.1:{port}",
        "command": [
            sys.executable,
            "-m",
            "allotment",
            "serve",
            "-c",
            str(ROOT / "examples/department.yaml"),
        ],
        "environment": {"ALLOTMENT_DATA_DIR": str(tmp_path / "data")},
        "cwd": str(ROOT),
    }
    hub = Hub(tmp_path, ["alice", "bob"], admins=[], services=[service])
    hub.start()
    try:
        api = f"http://127.0.0.1:{port}/services/allotment/api/"
        if not wait_healthy(api + "health"):
            pytest.fail("the hub did not start allot serve:\n" + hub.log_tail())
        headers = {"Authorization": f"token {hub.token('alice')}"}
        me = httpx.get(api + "me", headers=headers).json()
        assert me["name"] == "alice"
        assert [m["account"] for m in me["memberships"]] == ["physics/lab-a"]
        r = httpx.post(
            api + "workloads", headers=headers, json={"profile": "small", "command": ["true"]}
        )
        assert r.status_code == 201, r.text  # charged to her only account
        assert r.json()["account"] == "physics/lab-a"
    finally:
        hub.stop()
