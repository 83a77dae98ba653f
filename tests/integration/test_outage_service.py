"""A real `allot serve` (uvicorn) on a real PostgreSQL that is stopped and started again: the
connection a client keeps alive stays usable through every 503, and `allot submit` waits
the outage out, says so, and submits once."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.api.test_outage import JOB, Postgres, assert_unavailable, postgres  # noqa: F401
from tests.support.hub import free_port
from tests.support.process import ROOT, allot_serve, clean_env


def local_address(r: httpx.Response) -> object:
    """The client's end of the connection that carried ``r``."""
    return r.extensions["network_stream"].get_extra_info("client_addr")


def test_errors_leave_the_keep_alive_connection_usable(
    postgres: Postgres,  # noqa: F811
    tmp_path: Path,
) -> None:
    port = free_port()
    env = clean_env(ALLOTMENT_DATA_DIR=str(tmp_path / "data"), ALLOTMENT_DATABASE_URL=postgres.url)
    with allot_serve(port, env, "--log-level", "warning"):
        token = (tmp_path / "data" / "admin-token").read_text().strip()
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}/services/allotment/api/",
            headers={"Authorization": f"token {token}"},
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            timeout=20,
        ) as c:
            first = c.get("workloads")
            assert first.status_code == 200
            connection = local_address(first)
            postgres.stop()
            for path in ("workloads", "workloads?limit=1", "me", "quote"):
                r = c.get(path)  # a reset connection would raise here
                assert_unavailable(r, "database is unavailable")
                assert local_address(r) == connection, "the server closed the connection"
            assert_unavailable(c.post("workloads", json=JOB), "database is unavailable")
            assert c.get("health").status_code == 503
            assert c.get("health/live").status_code == 200
            postgres.start()
            deadline = time.monotonic() + 30
            while (r := c.post("workloads", json=JOB)).status_code != 201:
                assert r.status_code == 503, r.text
                assert time.monotonic() < deadline, "no submission accepted once it was back"
                time.sleep(0.2)
            assert local_address(r) == connection


def test_allot_submit_waits_out_a_stopped_database_and_says_so(
    postgres: Postgres,  # noqa: F811
    tmp_path: Path,
    shared: Path,
) -> None:
    port = free_port()
    env = clean_env(ALLOTMENT_DATA_DIR=str(tmp_path / "data"), ALLOTMENT_DATABASE_URL=postgres.url)
    with allot_serve(port, env, "--log-level", "warning", "--no-controller"):
        token = (tmp_path / "data" / "admin-token").read_text().strip()
        api = f"http://127.0.0.1:{port}/services/allotment/"
        postgres.stop()
        submit = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "allotment",
                "submit",
                "-A",
                "lab-a",
                "--profile",
                "small",
                "--",
                "true",
            ],
            # The job's directory is where allot runs: not the checkout, which may be under
            # /tmp (a clean clone in CI), where no job may work.
            cwd=shared,
            env=clean_env(ALLOTMENT_URL=api, ALLOTMENT_TOKEN=token),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(3)
        assert submit.poll() is None, submit.communicate()
        postgres.start()
        out, err = submit.communicate(timeout=60)
        assert submit.returncode == 0, (out, err)
        assert "Submitted job" in out
        assert "Allotment is unavailable (the database is unavailable" in err, err
        assert "retrying for up to 30 s" in err, err
        assert err.count("Allotment is unavailable") == 1, err
        workloads = httpx.get(
            api + "api/workloads", headers={"Authorization": f"token {token}"}, timeout=10
        ).json()["items"]
        assert len(workloads) == 1, workloads


def test_allot_gives_up_after_its_deadline_saying_what_happened(
    postgres: Postgres,  # noqa: F811
    tmp_path: Path,
) -> None:
    port = free_port()
    env = clean_env(ALLOTMENT_DATA_DIR=str(tmp_path / "data"), ALLOTMENT_DATABASE_URL=postgres.url)
    with allot_serve(port, env, "--log-level", "warning", "--no-controller"):
        token = (tmp_path / "data" / "admin-token").read_text().strip()
        postgres.stop()
        done = subprocess.run(
            [sys.executable, "-m", "allotment", "jobs"],
            cwd=ROOT,
            env=clean_env(
                ALLOTMENT_URL=f"http://127.0.0.1:{port}/services/allotment/",
                ALLOTMENT_TOKEN=token,
                ALLOTMENT_RETRY_SECONDS="3",
            ),
            capture_output=True,
            text=True,
            timeout=60,
        )
        postgres.start()
    assert done.returncode == 1, done
    assert "retrying for up to 3 s" in done.stderr
    assert "The Allotment service answered 503: the database is unavailable" in done.stderr
    assert "tried " in done.stderr and " times over 3 s" in done.stderr, done.stderr
