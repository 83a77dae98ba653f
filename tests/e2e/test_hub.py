"""The front door in a real browser: `allot up` on loopback (JupyterHub, Traefik, the service,
the AllotmentSpawner), driven by Playwright in Debian's Chromium.

One story, in order, on a box with room for two small sessions: alice sees the quote, starts a
session, gets JupyterLab and runs a cell in it, as her own POSIX account in a private home;
the meter in JupyterLab's status bar shows
the cost so far and per hour and the budget left, and moves; bob cannot open alice's session; with alice and bob running, carol's session waits and her
page shows its place; when alice stops hers, carol's starts. Screenshots of each page go to
``test-artefacts/`` (docs/screenshots/ come from there).
"""

from __future__ import annotations

import os
import pwd
import re
import stat
from pathlib import Path
from typing import Any

from tests.support.hubup import HubUp
from tests.support.jobs import wait_for
from tests.support.process import command_lines

LAB_READY = "#jp-main-dock-panel"


def _login(browser: Any, hub: HubUp, user: str) -> Any:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.goto(hub.url + "/hub/login")
    page.fill("#username_input", user)
    page.fill("#password_input", hub.secret("user-password"))
    page.click("#login_submit")
    page.wait_for_load_state()
    return page


def _start(page: Any, hub: HubUp, profile: str) -> None:
    page.goto(hub.url + "/hub/spawn")
    page.wait_for_selector(".allot-profile")
    page.check(f"input[name=profile][value={profile}]")
    page.click("form button[type=submit], form input[type=submit]")


def _session_of(hub: HubUp, user: str) -> dict[str, Any]:
    with hub.api() as api:
        items = api.get("workloads", params={"kind": "session", "user": user, "limit": 1}).json()[
            "items"
        ]
    assert items, f"{user} has no session workload"
    return dict(items[0])


def _stop(page: Any, hub: HubUp) -> None:
    page.goto(hub.url + "/hub/home")
    page.click("#stop")
    page.wait_for_selector("#start", state="visible", timeout=120_000)


def _singleuser_uid(hub: HubUp, user: str) -> int | None:
    """Owner of the jupyterhub-singleuser process serving ``user`` for ``hub`` (not another
    hub's: the Slurm session test's may run at the same time, for a user of the same name)."""
    api = f":{hub.args[hub.args.index('--hub-port') + 1]}/hub/api".encode()
    for pid, cmd in command_lines():
        argv = cmd.split(b"\0")[:2]  # the server itself, not the launcher that names it
        if not any(a.endswith(b"/jupyterhub-singleuser") for a in argv):
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if f"JUPYTERHUB_USER={user}".encode() in environ and any(
                e.startswith(b"JUPYTERHUB_API_URL=") and api in e for e in environ
            ):
                return os.stat(f"/proc/{pid}").st_uid
        except OSError:
            continue
    return None


def test_launch_run_isolate_queue_and_stop(hub_up: HubUp, browser: Any, artefacts: Path) -> None:
    hub = hub_up
    alice = _login(browser, hub, "alice")

    # The launch form: profiles with a live quote.
    alice.goto(hub.url + "/hub/spawn")
    alice.wait_for_selector(".allot-profile")
    small = alice.locator(".allot-profile[data-profile=small]")
    assert "Starts now" in small.inner_text()
    assert "1.50 credits per hour" in small.inner_text()  # 1 CPU × 1.0 + 2 GiB × 0.25
    assert "500.00 credits left of 500.00 this month" in small.inner_text()
    alice.screenshot(path=str(artefacts / "launch-form.png"), full_page=True)
    # The numbers refresh while the form is open.
    first = alice.inner_text("#allot-updated")
    alice.wait_for_function(
        "t => document.getElementById('allot-updated').textContent !== t", arg=first
    )

    # Start a session: JupyterLab loads, and a cell runs.
    _start(alice, hub, "small")
    alice.wait_for_url(re.compile(r"/user/alice/lab"), timeout=120_000)
    alice.wait_for_selector(LAB_READY, timeout=120_000)
    # A fresh workspace (her home may hold one from an earlier run): the launcher shows.
    alice.goto(hub.url + "/user/alice/lab?reset")
    alice.wait_for_selector(".jp-LauncherCard[data-category=Notebook]", timeout=60_000)
    alice.screenshot(path=str(artefacts / "jupyterlab.png"))
    alice.locator(".jp-LauncherCard[data-category=Notebook]").first.click()
    cell = alice.locator(".jp-Notebook .jp-Cell .cm-content").first
    cell.wait_for(timeout=60_000)
    # The kernel is up when the status bar says so (the toolbar's indicator is idle before).
    alice.wait_for_selector(".jp-StatusBar-TextItem:has-text('Idle')", timeout=60_000)
    cell.click()
    alice.keyboard.type("import os; print(6 * 7, os.environ['ALLOT_ACCOUNT'])")
    alice.wait_for_selector(".jp-Notebook .jp-Cell .cm-content:has-text('6 * 7')")
    alice.keyboard.press("Shift+Enter")
    alice.wait_for_selector(".jp-OutputArea-output:has-text('42 lab')", timeout=60_000)
    # The meter in the status bar: cost so far, per hour, budget left; and it moves.
    meter = alice.locator(".allotment-meter")
    meter.wait_for(timeout=30_000)
    alice.wait_for_function(
        "() => (document.querySelector('.allotment-meter').dataset.cost || '') !== ''",
        timeout=60_000,
    )
    text = meter.inner_text()
    assert "so far" in text and "1.50 credits/h" in text and "left in lab" in text, text
    cost = float(meter.get_attribute("data-cost") or 0)
    alice.wait_for_function(
        "c => parseFloat(document.querySelector('.allotment-meter').dataset.cost) > c",
        arg=cost,
        timeout=30_000,
    )
    alice.screenshot(path=str(artefacts / "cell.png"))

    # It runs as alice's own POSIX account, whose home only she can read.
    session = _session_of(hub, "alice")
    assert (session["status"], session["profile"], session["account"]) == (
        "running",
        "small",
        "lab",
    )
    account = pwd.getpwuid(wait_for(lambda: _singleuser_uid(hub, "alice"), what="alice's server"))
    assert account.pw_name in ("alice", "jupyter-alice")
    assert stat.S_IMODE(os.stat(account.pw_dir).st_mode) == 0o700

    # Bob may not open alice's session.
    bob = _login(browser, hub, "bob")
    r = bob.goto(hub.url + "/user/alice/lab")
    assert r is not None and r.status == 403, r and r.status
    assert bob.locator(LAB_READY).count() == 0
    bob.screenshot(path=str(artefacts / "refused.png"))

    # Bob takes the second CPU; the box is full, so carol's session queues and says where.
    _start(bob, hub, "small")
    bob.wait_for_selector(LAB_READY, timeout=120_000)
    carol = _login(browser, hub, "carol")
    carol.goto(hub.url + "/hub/spawn")
    carol.wait_for_selector(".allot-profile[data-profile=small]")
    assert "Queued: 1st in line" in carol.inner_text(".allot-profile[data-profile=small]")
    _start(carol, hub, "small")
    carol.wait_for_url(re.compile(r"/hub/spawn-pending/carol"))
    carol.wait_for_selector("text=/Queued: 1st in line/", timeout=60_000)
    carol.screenshot(path=str(artefacts / "queued.png"))
    assert _session_of(hub, "carol")["status"] == "pending"

    # Alice stops hers: carol's starts in its place.
    _stop(alice, hub)
    assert wait_for(lambda: _session_of(hub, "alice")["status"] == "stopped", seconds=60)
    carol.wait_for_selector(LAB_READY, timeout=120_000)
    assert _session_of(hub, "carol")["status"] == "running"
    for page in (bob, carol):
        _stop(page, hub)
    assert wait_for(
        lambda: {_session_of(hub, u)["status"] for u in ("alice", "bob", "carol")} == {"stopped"},
        seconds=60,
    )
    assert _singleuser_uid(hub, "alice") is None
