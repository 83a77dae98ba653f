"""Kill -9 the service while researchers submit: nothing acknowledged is lost, and a retry with
the same Idempotency-Key after the restart never creates a second workload. Both databases."""

from __future__ import annotations

import signal
import threading
import time
from contextlib import AbstractContextManager
from pathlib import Path
from subprocess import Popen

import httpx

from tests.support.hub import free_port
from tests.support.process import allot_serve, clean_env

ROOT = Path(__file__).resolve().parents[2]


def serve(database_url: str, data: Path, port: int) -> AbstractContextManager[Popen[str]]:
    env = clean_env(ALLOTMENT_DATA_DIR=str(data), ALLOTMENT_DATABASE_URL=database_url)
    return allot_serve(port, env, "--log-level", "warning", "--no-controller")


def test_kill_9_during_submissions_loses_nothing(database_url: str, tmp_path: Path) -> None:
    port = free_port()
    api = f"http://127.0.0.1:{port}/services/allotment/api/"
    acknowledged: dict[str, int] = {}  # idempotency key -> workload id
    attempted: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def submitter(n: int, token: str) -> None:
        with httpx.Client(base_url=api, headers={"Authorization": f"token {token}"}) as c:
            i = 0
            while not stop.is_set():
                key = f"w{n}-{i}"
                i += 1
                with lock:
                    attempted.append(key)
                try:
                    r = c.post(
                        "workloads",
                        json={"profile": "small", "command": ["true"], "account": "lab-a"},
                        headers={"Idempotency-Key": key},
                        timeout=5,
                    )
                except httpx.HTTPError:
                    return  # the service died under us
                if r.status_code == 201:
                    with lock:
                        acknowledged[key] = r.json()["id"]

    with serve(database_url, tmp_path / "data", port) as proc:
        token = (tmp_path / "data" / "admin-token").read_text().strip()
        threads = [threading.Thread(target=submitter, args=(n, token)) for n in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while len(acknowledged) < 200:
            assert time.monotonic() < deadline, f"only {len(acknowledged)} acknowledged in 120 s"
            assert any(t.is_alive() for t in threads), "every submitter stopped early"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        stop.set()
        for t in threads:
            t.join()

    with serve(database_url, tmp_path / "data", port):
        headers = {"Authorization": f"token {token}"}
        with httpx.Client(base_url=api, headers=headers) as c:
            # Every acknowledged workload survived the crash.
            assert set(acknowledged.values()) <= set(all_ids(c))
            # Retrying every request, answered or not, creates each workload exactly once.
            for key in attempted:
                r = c.post(
                    "workloads",
                    json={"profile": "small", "command": ["true"], "account": "lab-a"},
                    headers={"Idempotency-Key": key},
                )
                assert r.status_code in (200, 201), r.text
                if key in acknowledged:
                    assert (r.status_code, r.json()["id"]) == (200, acknowledged[key])
            assert len(all_ids(c)) == len(attempted)


def all_ids(c: httpx.Client) -> list[int]:
    ids: list[int] = []
    cursor = None
    while True:
        params: dict[str, object] = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
        page = c.get("workloads", params=params).json()
        ids += [w["id"] for w in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            return ids
