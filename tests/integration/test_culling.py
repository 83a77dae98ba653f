"""The culler, on a real `allot serve` running sessions as POSIX users in cgroups: a session
nobody uses is stopped, with a warning in its meter first; one whose server reports activity
and one that computes (CPU use, browser closed) are kept; only the owner may report activity."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.hub import Hub, free_port
from tests.support.jobs import job_service, policy_file, wait_for

pytestmark = pytest.mark.jupyterhub


def test_unused_sessions_stop_and_used_ones_stay(tmp_path: Path, hub: Hub, shared: Path) -> None:
    policy = policy_file(tmp_path, cull_idle="8s", cull_warning="5s")
    with job_service(free_port(), tmp_path / "data", None, hub.api_url, policy) as s:
        alice = hub.token("alice")
        with s.client(alice) as c, s.client(hub.spawner_token) as spawner:

            def session(*command: str) -> int:
                # As the hub starts one: its spawner acts for alice.
                r = spawner.post(
                    "workloads",
                    headers={"X-Allotment-User": "alice"},
                    json={
                        "kind": "session",
                        "profile": "small",
                        "cpus": 0.5,
                        "command": list(command),
                        "workdir": str(shared),
                    },
                )
                assert r.status_code == 201, r.text
                return int(r.json()["id"])

            idle = session("sleep", "300")
            computing = session("python3", "-c", "while True: pass")
            reported = session("sleep", "300")

            def status(w: int) -> str:
                return str(c.get(f"workloads/{w}").json()["status"])

            wait_for(lambda: all(status(w) == "running" for w in (idle, computing, reported)))
            warned = False
            deadline = time.monotonic() + 60
            while status(idle) == "running" and time.monotonic() < deadline:
                r = c.post(
                    f"workloads/{reported}/activity",
                    json={"last_activity": "2026-11-22T00:00:00Z", "busy": True},
                )
                assert r.status_code == 204, r.text
                warned |= any(
                    "Unused" in x for x in c.get(f"workloads/{idle}/meter").json()["warnings"]
                )
                time.sleep(1)
            stopped = c.get(f"workloads/{idle}").json()
            assert stopped["status"] == "stopped", stopped
            assert stopped["reason"].startswith(
                "stopped after 8s unused (no browser, kernel or CPU"
            )
            assert warned, "the meter did not warn before the stop"
            assert status(computing) == "running" and status(reported) == "running"
            assert not any(
                "Unused" in x for x in c.get(f"workloads/{reported}/meter").json()["warnings"]
            )
        # Bob may not keep alice's session alive.
        with s.client(hub.token("bob")) as c:
            r = c.post(
                f"workloads/{reported}/activity", json={"last_activity": "2026-11-22T00:00:00Z"}
            )
            assert r.status_code == 404
        with s.client(alice) as c:
            for w in (computing, reported):
                c.post(f"workloads/{w}/cancel")
