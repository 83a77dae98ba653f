"""The dashboard in a real browser, logged in through the real hub's OAuth for services: a
member, a manager and an administrator on every page, a member refused another account's page
(404), forms refused without their XSRF token, the hub's Services menu linking to it.
Screenshots go to ``test-artefacts/`` (docs/screenshots/ come from there).

Its own accounts (physics, with optics and cosmo below) and users (dana and eve in optics, zed
in cosmo, mona managing physics), created through the API as the headless administrator, keep
it apart from the hub story in test_hub.py (account ``lab``, whose budget it leaves untouched).
A month of daily totals and one wasteful job's ledger entries are written into the service's
SQLite database directly, as the meter would have."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.support.hubup import HubUp

DASHBOARD = "/services/allotment/dashboard"


def _ts(t: datetime) -> str:
    """A time as SQLAlchemy stores it in SQLite (UTC, no zone)."""
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _login(browser: Any, hub: HubUp, user: str) -> Any:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(hub.url + "/hub/login")
    page.fill("#username_input", user)
    password = "admin-password" if user == "admin" else "user-password"
    page.fill("#password_input", hub.secret(password))
    page.click("#login_submit")
    page.wait_for_load_state()
    return page


def _setup(hub: HubUp) -> None:
    with hub.api() as api:
        for body in (
            {"name": "physics", "description": "Department of Physics"},
            {"name": "optics", "parent": "physics", "shares": 2, "description": "Optics lab"},
            {"name": "cosmo", "parent": "physics", "description": "Cosmology lab"},
        ):
            r = api.post("accounts", json=body)
            assert r.status_code in (201, 409), r.text
        for account, user, role in (
            ("physics", "mona", "manager"),
            ("physics/optics", "dana", "member"),
            ("physics/optics", "eve", "member"),
            ("physics/cosmo", "zed", "member"),
        ):
            r = api.put(f"accounts/{account}/members/{user}", json={"role": role})
            assert r.status_code == 200, r.text


def _seed(hub: HubUp) -> None:
    """The last 30 days of use in optics and cosmo, a budget for optics, and one of dana's
    jobs that held 8 CPUs at 3 % and 32G with a 1.5G peak for 6 hours."""
    db = sqlite3.connect(hub.data / "service" / "allotment.sqlite", timeout=30)
    try:
        ids = dict(db.execute("SELECT path, id FROM accounts"))
        users = dict(db.execute("SELECT name, id FROM users"))
        pool = db.execute("SELECT id FROM pools WHERE name = 'box'").fetchone()[0]
        today = datetime.now(UTC).date()
        rows = []
        for i in range(30):
            day = (today - timedelta(days=29 - i)).isoformat()
            for user, account, credits, efficiency in (
                ("dana", "physics/optics", 1.5 + (i % 7) * 0.4, 0.35),
                ("eve", "physics/optics", 0.8 + (i % 5) * 0.3, 0.8),
                ("zed", "physics/cosmo", 1.0 + (i % 3) * 0.5, 0.6),
            ):
                cpu_s = credits * 3600
                rows.append(
                    (day, ids[account], users[user], pool, 0, round(credits * 1e6), cpu_s,
                     cpu_s / 4, 0.0, 0.0, cpu_s * efficiency)
                )  # fmt: skip
        db.executemany(
            "INSERT OR IGNORE INTO usage_days (day, account_id, user_id, pool_id, profile_id, "
            "amount, cpu_seconds, memory_gib_seconds, gpu_seconds, share_seconds, "
            "used_cpu_seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        now = datetime.now(UTC)
        if not db.execute(
            "SELECT 1 FROM budgets WHERE account_id = ?", (ids["physics/optics"],)
        ).fetchone():
            db.execute(
                "INSERT INTO budgets (account_id, pool_id, spec, origin, file_amount, updated_at, "
                "updated_by) VALUES (?, NULL, ?, 'api', NULL, ?, 'mona')",
                (
                    ids["physics/optics"],
                    json.dumps({"amount": 150, "period": "month"}),
                    _ts(now),
                ),
            )
        start = now - timedelta(hours=10)
        cur = db.execute(
            "INSERT INTO workloads (kind, name, user_id, account_id, pool_id, millicpus, memory, "
            "gpus, target, status, reason, created_at, updated_at, started_at, ended_at) "
            "VALUES ('job', 'sweep', ?, ?, ?, 8000, ?, '{}', 5, 5, '', ?, ?, ?, ?)",
            (users["dana"], ids["physics/optics"], pool, 32 * 2**30, _ts(start),
             _ts(now), _ts(start),
             _ts(start + timedelta(hours=6))),
        )  # fmt: skip
        job = cur.lastrowid
        # Its charges are in the day's totals too, as the meter writes them.
        db.execute(
            "UPDATE usage_days SET amount = amount + 96000000 WHERE day = ? AND user_id = ? "
            "AND account_id = ?",
            (start.date().isoformat(), users["dana"], ids["physics/optics"]),
        )
        for h in range(6):
            a, b = start + timedelta(hours=h), start + timedelta(hours=h + 1)
            db.execute(
                "INSERT INTO ledger_entries (key, kind, source, workload_id, account_id, user_id, "
                "pool_id, start, \"end\", millicpus, memory, gpus, rate, amount, "
                "used_cpu_seconds, peak_memory, note, created_at) VALUES "
                "(?, 'charge', 'local', ?, ?, ?, ?, ?, ?, 8000, ?, '{}', 16000000, 16000000, "
                "?, ?, '', ?)",
                (f"w:{job}:{a.isoformat()}", job, ids["physics/optics"], users["dana"], pool,
                 _ts(a), _ts(b), 32 * 2**30, 8 * 3600 * 0.03,
                 int(1.5 * 2**30), _ts(now)),
            )  # fmt: skip
        db.commit()
    finally:
        db.close()


def test_dashboard_for_member_manager_and_admin(
    hub_up: HubUp, browser: Any, artefacts: Path
) -> None:
    hub = hub_up
    _setup(hub)
    _seed(hub)

    # The hub's navigation bar lists the service; its link leads to the dashboard, logged in
    # through the hub's OAuth (no second password).
    dana = _login(browser, hub, "dana")
    dana.goto(hub.url + "/hub/home")
    link = dana.locator("a[href='/services/allotment/']")
    assert link.count() == 1, dana.content()
    dana.goto(hub.url + "/services/allotment/")
    dana.wait_for_url(f"**{DASHBOARD}/")
    assert dana.inner_text("h1") == "dana"
    cookies = {c["name"]: c for c in dana.context.cookies()}
    session = cookies["allotment-dashboard"]
    assert session["httpOnly"] and session["sameSite"] == "Lax"
    assert session["path"] == "/services/allotment/"
    assert "96.00 credits" in dana.inner_text("#workloads")  # 6 hourly entries of 16.00
    dana.screenshot(path=str(artefacts / "dashboard-me.png"), full_page=True)

    # The member's account: plot, burn-down, quota, queue, leaderboard.
    r = dana.goto(hub.url + f"{DASHBOARD}/accounts/physics/optics")
    assert r.status == 200
    dana.wait_for_function("document.querySelectorAll('canvas').length >= 2")
    board = dana.inner_text("#leaderboard")
    assert "dana" in board and "eve" in board and "zed" not in board
    assert "of 150.00 credits spent" in dana.inner_text("body")
    assert "Add member" not in dana.inner_text("body")
    dana.wait_for_timeout(500)  # the plots draw without animation; let them settle
    dana.screenshot(path=str(artefacts / "dashboard-account.png"), full_page=True)
    # Another account's page, the institute's whole and the admin's are not hers.
    for path, status in (
        ("accounts/physics/cosmo", 404),
        ("accounts/physics", 404),
        ("admin", 403),
    ):
        r = dana.goto(hub.url + f"{DASHBOARD}/{path}")
        assert r.status == status, (path, r.status)
    assert "zed" not in dana.content()
    r = dana.goto(hub.url + f"{DASHBOARD}/waste")
    assert "8 CPUs at 3.0 % for 6.0 h" in dana.inner_text("#waste")
    assert "32G requested, 1.5G peak" in dana.inner_text("#waste")

    # The manager: the subtree, and the forms.
    mona = _login(browser, hub, "mona")
    r = mona.goto(hub.url + f"{DASHBOARD}/accounts/physics")
    assert r.status == 200
    mona.wait_for_function("document.querySelectorAll('canvas').length >= 1")
    assert "zed" in mona.inner_text("#leaderboard")
    mona.screenshot(path=str(artefacts / "dashboard-manager.png"), full_page=True)
    mona.goto(hub.url + f"{DASHBOARD}/accounts/physics/optics")
    mona.fill("#add-member input[name=user]", "walt")
    mona.click("#add-member button[type=submit]")
    mona.wait_for_selector(".flash.ok")
    assert "walt is now a member of physics/optics." in mona.inner_text(".flash")
    assert "walt" in mona.inner_text("#members")
    # A form without its XSRF token (as another site's page would send it) is refused.
    refused = mona.request.post(
        hub.url + f"{DASHBOARD}/accounts/physics/optics/members/add",
        form={"user": "mallory", "role": "manager"},
    )
    assert refused.status == 403
    mona.goto(hub.url + f"{DASHBOARD}/accounts/physics/optics")
    assert "mallory" not in mona.inner_text("#members")
    mona.goto(hub.url + f"{DASHBOARD}/accounts/physics")
    mona.fill("#create-child input[name=name]", "lasers")
    mona.click("#create-child button[type=submit]")
    mona.wait_for_selector(".flash.ok")
    assert "physics/lasers" in mona.inner_text("#children")
    assert mona.goto(hub.url + f"{DASHBOARD}/admin").status == 403

    # The administrator: pool utilisation, the whole queue, the fair-share tree, the audit log.
    admin = _login(browser, hub, "admin")
    r = admin.goto(hub.url + f"{DASHBOARD}/admin")
    assert r.status == 200
    admin.wait_for_function("document.querySelectorAll('canvas').length >= 1")
    tree = admin.inner_text("#fairshare")
    assert "physics/optics" in tree and "dana" in tree
    admin.screenshot(path=str(artefacts / "dashboard-admin.png"), full_page=True)
    admin.goto(hub.url + f"{DASHBOARD}/waste")
    assert "sweep" in admin.inner_text("#waste")
    admin.screenshot(path=str(artefacts / "dashboard-waste.png"), full_page=True)
    r = admin.goto(hub.url + f"{DASHBOARD}/accounts/physics/cosmo")
    assert r.status == 200
    for context in (dana.context, mona.context, admin.context):
        context.close()
