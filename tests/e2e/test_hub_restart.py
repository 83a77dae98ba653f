"""Restarting the whole hub (JupyterHub, Traefik, the service) loses no session and no file:
the session keeps running as the same process, the hub finds it again, and it is reachable
through the proxy as before."""

from __future__ import annotations

import httpx

from tests.support.hubup import HubUp
from tests.support.jobs import wait_for


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


def _xsrf(c: httpx.Client, path: str) -> str:
    """The XSRF cookie of the hub (/hub/) or of a session (/user/<name>/)."""
    for cookie in c.cookies.jar:
        if cookie.name == "_xsrf" and cookie.path.rstrip("/") == path.rstrip("/"):
            return str(cookie.value)
    return ""


def _server(c: httpx.Client) -> dict[str, object]:
    r = c.get("/hub/api/user", headers={"X-XSRFToken": _xsrf(c, "/hub/")})
    return dict(r.json()["servers"].get("", {}))


def test_a_hub_restart_keeps_sessions_and_files(hub_up: HubUp) -> None:
    hub = hub_up
    c = _login(hub, "dora")
    r = c.post("/hub/spawn", data={"profile": "small", "_xsrf": _xsrf(c, "/hub/")})
    assert r.status_code == 200
    wait_for(lambda: _server(c).get("ready"), seconds=120, what="dora's session")
    # Her session's own API (through the proxy, with her browser's login): save a file.
    c.get("/user/dora/lab")
    xsrf = {"X-XSRFToken": _xsrf(c, "/user/dora/")}
    r = c.put(
        "/user/dora/api/contents/keep.txt",
        json={"type": "file", "format": "text", "content": "still here"},
        headers=xsrf,
    )
    assert r.status_code in (200, 201), r.text
    with hub.api() as api:
        (before,) = api.get("workloads", params={"kind": "session", "user": "dora"}).json()["items"]
    assert before["status"] == "running"

    hub.halt()
    hub.launch()

    with hub.api() as api:
        after = api.get(f"workloads/{before['id']}").json()
    assert (after["status"], after["started_at"]) == ("running", before["started_at"])
    c = _login(hub, "dora")
    assert wait_for(lambda: _server(c).get("ready"), seconds=60, what="the hub to find it again")
    c.get("/user/dora/lab")
    r = c.get("/user/dora/api/contents/keep.txt")
    assert r.status_code == 200 and r.json()["content"] == "still here", r.text
    c.delete("/hub/api/users/dora/server", headers={"X-XSRFToken": _xsrf(c, "/hub/")})
    with hub.api() as api:
        wait_for(
            lambda: api.get(f"workloads/{before['id']}").json()["status"] == "stopped",
            seconds=60,
            what="the session to stop",
        )
