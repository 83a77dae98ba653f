"""JupyterLab sessions on a real Slurm cluster through the whole hub (`allot up`: JupyterHub,
Traefik, the service, the AllotmentSpawner), with real daemons (``slurm_cluster``: nodes n1..n3,
two CPUs each).

One story, in order: alice's launch form quotes Slurm's free CPUs; her session starts as a
Slurm job of her POSIX account on whichever node Slurm picks, and JupyterLab answers through the
hub at that node's address; it is still reached after the hub is restarted and after the
Allotment service is killed and restarted; with the cluster full, bob's session waits in Slurm's
queue and his spawn page says so in Slurm's words, then starts when room is made; alice's node
fails, and her session is reported ended with "node nX stopped responding" (not hung), which her
next launch form says.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.hubup import HubUp, start_hub
from tests.support.jobs import wait_for
from tests.support.process import command_lines
from tests.support.slurm import SlurmCluster

POLICY = Path(__file__).with_name("slurm_policy.yaml")
ARTEFACTS = Path(os.environ.get("ALLOTMENT_ARTEFACTS", "test-artefacts"))


@pytest.fixture(scope="module")
def slurm_hub(slurm_cluster: SlurmCluster) -> Iterator[HubUp]:
    # Not under /tmp (each workload has its own) nor pytest's 0700 directories: sessions run
    # as their users, on the nodes, and must reach the environment in the data directory.
    root = Path(tempfile.mkdtemp(prefix="allotment-e2e-slurm-", dir="/var/tmp"))
    os.chmod(root, 0o711)
    policy = root / "policy.yaml"
    policy.write_text(POLICY.read_text().replace("SLURM_CONF", str(slurm_cluster.conf)))
    # The account the sessions are charged to, as the mirror makes it where the service
    # mirrors accounts (an existing account is left as it is).
    slurm_cluster.run("sacctmgr", "-i", "add", "account", "lab", check=False)
    hub = start_hub(root / "data", policy)
    try:
        yield hub
    finally:
        hub.stop()
        slurm_cluster.cancel_all()  # a failed test's fillers, say: the next tests need the nodes
        # The hub's and the service's log, for a failure's story.
        ARTEFACTS.mkdir(exist_ok=True)
        shutil.copy(root / "data-up.log", ARTEFACTS / "slurm-session-up.log")
        shutil.rmtree(root, ignore_errors=True)


def _xsrf(c: httpx.Client, path: str) -> str:
    for cookie in c.cookies.jar:
        if cookie.name == "_xsrf" and cookie.path.rstrip("/") == path.rstrip("/"):
            return str(cookie.value)
    return ""


def _login(hub: HubUp, user: str) -> httpx.Client:
    c = httpx.Client(base_url=hub.url, follow_redirects=True, timeout=60)
    c.get("/hub/login")
    r = c.post(
        "/hub/login",
        data={
            "username": user,
            "password": hub.secret("user-password"),
            "_xsrf": _xsrf(c, "/hub/"),
        },
    )
    assert r.status_code == 200, r.text[-500:]
    return c


def _server(c: httpx.Client) -> dict[str, Any]:
    r = c.get("/hub/api/user", headers={"X-XSRFToken": _xsrf(c, "/hub/")})
    return dict(r.json()["servers"].get("", {}))


def _spawn(c: httpx.Client, profile: str = "small") -> None:
    r = c.post("/hub/spawn", data={"profile": profile, "_xsrf": _xsrf(c, "/hub/")}, timeout=120)
    assert r.status_code == 200, r.text[-500:]


def _form_quote(c: httpx.Client) -> dict[str, Any]:
    """The quote the launch form was rendered with (its script's initial JSON)."""
    html = c.get("/hub/spawn").text
    m = re.search(r"var initial = (\{.*?\});\n", html)
    assert m, html[-2000:]
    profiles = json.loads(m.group(1))["profiles"]
    return dict(next(p for p in profiles if p["profile"] == "small"))


def _session(hub: HubUp, user: str) -> dict[str, Any]:
    with hub.api() as api:
        items = api.get("workloads", params={"kind": "session", "user": user, "limit": 1}).json()[
            "items"
        ]
    assert items, f"{user} has no session"
    return dict(items[0])


def _lab_answers(c: httpx.Client, user: str) -> bool:
    """JupyterLab's own API answers the user through the hub's proxy (after the page has
    logged the browser in to the server through the hub)."""
    try:
        if not _xsrf(c, f"/user/{user}/"):
            c.get(f"/user/{user}/lab")
        r = c.get(f"/user/{user}/api/status", headers={"X-XSRFToken": _xsrf(c, f"/user/{user}/")})
    except httpx.HTTPError:
        return False
    return r.status_code == 200 and "started" in r.json()


def _progress(c: httpx.Client, user: str, *wanted: str, seconds: float = 60) -> str:
    """The first spawn-page message (the hub's progress stream) that contains one of
    ``wanted``."""
    seen: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with c.stream(
                "GET",
                f"/hub/api/users/{user}/server/progress",
                headers={"X-XSRFToken": _xsrf(c, "/hub/")},
                timeout=max(deadline - time.monotonic(), 1),
            ) as r:
                for line in r.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    message = str(json.loads(line[5:]).get("message", ""))
                    seen.append(message)
                    if any(w in message for w in wanted):
                        return message
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"the spawn page never said {wanted!r}; it said {seen}")


def _serve_pids(hub: HubUp) -> list[int]:
    needle = str(hub.data / "allotment.yaml").encode()
    return [pid for pid, cmd in command_lines() if needle in cmd and b"serve" in cmd]


def test_a_session_on_slurm_starts_survives_restarts_queues_and_is_lost_with_its_node(
    slurm_hub: HubUp, slurm_cluster: SlurmCluster
) -> None:
    hub, cluster = slurm_hub, slurm_cluster
    cluster.wait_idle()
    alice = _login(hub, "alice")

    # The launch form quotes Slurm's own free resources: three idle nodes of two CPUs.
    quote = _form_quote(alice)
    assert (quote["free_cpus"], quote["starts_now"], quote["pool"]) == (6, True, "cluster")

    # Her session starts as a Slurm job of her own POSIX account, on a node Slurm picked.
    _spawn(alice)
    _ready(hub, alice, "alice")
    s = _session(hub, "alice")
    assert s["status"] == "running" and s["node"] in cluster.nodes, s
    node = s["node"]
    assert s["host"] == f"127.0.1.{node[1:]}", s  # the node's NodeAddr
    jobs = cluster.run("squeue", "-h", "-t", "R", "-o", "%u %N %j").split("\n")
    mine = [j.split() for j in jobs if j.endswith(f".{s['id']}")]
    assert mine and mine[0][0] in ("alice", "jupyter-alice") and mine[0][1] == node, jobs
    assert wait_for(lambda: _lab_answers(alice, "alice"), seconds=60, what="JupyterLab")
    # JupyterLab listens on its node's address, where the hub reaches it.
    assert _server(alice)["url"] == "/user/alice/"
    started = s["started_at"]

    # The hub restarted: still there, still reached.
    hub.halt()
    hub.launch()
    alice = _login(hub, "alice")
    assert wait_for(lambda: _server(alice).get("ready"), seconds=60, what="the hub to find it")
    assert wait_for(lambda: _lab_answers(alice, "alice"), seconds=60, what="JupyterLab again")
    assert (_session(hub, "alice")["status"], _session(hub, "alice")["started_at"]) == (
        "running",
        started,
    )

    # Allotment itself killed (the hub starts its service again): the session is untouched.
    pids = _serve_pids(hub)
    assert pids, "no allot serve process found"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: not set(pids) & set(_serve_pids(hub)) and bool(_serve_pids(hub)),
        seconds=60,
        what="the hub to start its service again",
    )
    wait_for(lambda: _health(hub), seconds=60, what="the service to answer")
    assert _session(hub, "alice")["status"] == "running"
    assert _session(hub, "alice")["started_at"] == started
    assert _lab_answers(alice, "alice")

    # The cluster full: bob's form quotes a wait, and his session waits in Slurm's queue
    # with Slurm's reason on his spawn page.
    fillers = [
        cluster.run(
            "sbatch", "--parsable", "-p", "main", "-c", "1", "--mem", "100M", "-t", "30",
            "-o", "/dev/null", "-D", "/var/tmp", "-J", "filler", "--wrap", "sleep 900",
        ).strip()
        for _ in range(5)
    ]  # fmt: skip
    wait_for(
        lambda: (
            sorted(cluster.run("squeue", "-h", "-t", "R", "-n", "filler", "-o", "%i").split())
            == sorted(fillers)  # squeue lists them in its own order
        ),
        seconds=30,
        what="the fillers to run",
    )
    bob = _login(hub, "bob")
    assert wait_for(lambda: not _form_quote(bob)["starts_now"], seconds=15, what="a full quote")
    _spawn(bob)
    # Submitted, the job reads "(None)" until Slurm's next scheduling pass looks at it; then
    # the page says what it waits for.
    message = _progress(bob, "bob", "(Resources)", "(Priority)")
    assert message.startswith("Queued in Slurm: "), message
    assert _session(hub, "bob")["status"] in ("admitted", "starting")
    cluster.run("scancel", *fillers)
    _ready(hub, bob, "bob", 120)
    assert wait_for(lambda: _lab_answers(bob, "bob"), seconds=60, what="bob's JupyterLab")

    # Alice's node fails: her session is reported ended, with the reason, not left hanging.
    cluster.kill_node(node)
    try:
        ended = wait_for(
            lambda: (w := _session(hub, "alice"))["status"] in ("failed", "stopped") and w,
            seconds=180,
            what="alice's session to be reported lost",
        )
        assert f"node {node} stopped responding" in ended["reason"], ended
        wait_for(lambda: not _server(alice), seconds=120, what="the hub to see it ended")
        notice = alice.get("/hub/spawn").text
        assert f"Your last session ended: node {node} stopped responding" in notice
    finally:
        cluster.start_node(node)
        cluster.resume(node)


def _ready(hub: HubUp, c: httpx.Client, user: str, seconds: float = 180) -> None:
    """Wait until the hub says the user's server is ready; else fail with the session's
    state and the spawner's log."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _server(c).get("ready"):
            return
        time.sleep(0.2)
    raise AssertionError(
        f"{user}'s session is not ready after {seconds} s: {_session(hub, user)}\n"
        + hub.log_tail(8000)
    )


def _health(hub: HubUp) -> bool:
    try:
        return httpx.get(hub.url + "/services/allotment/api/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
