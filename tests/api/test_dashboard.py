"""The dashboard's pages through the app in-process, on both databases, with tokens from a
real JupyterHub: what each page shows from seeded daily totals and ledger entries (sums to the
cent), who sees which account (404 otherwise), the leaderboard's setting, the login cookie
and its OAuth state check, and forms refused without their XSRF token. The browser tests
(tests/e2e/test_dashboard.py) log in through the hub's real OAuth."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from sqlalchemy import select

from allotment.db.tables import Account, LedgerEntry, Membership, Pool, UsageDay, User, Workload
from allotment.domain.workloads import WorkloadState
from allotment.web.oauth import HubOAuthClient
from tests.support.hub import Hub
from tests.support.service import Service, running_service

POLICY = """
currency: credits
accounting: {time_zone: Europe/Berlin, leaderboard: LEADERBOARD}
accounts:
  inst: {managers: [carol]}
  lab-a: {parent: inst, members: [alice, bob]}
  lab-b: {parent: inst, members: [dave]}
pools:
  box:
    nodes: [{name: n1, cpus: 32, memory: 256G}]
    rates: {cpu: 1.0, memory: 0.1}
profiles:
  small: {pool: box, size: {cpus: 1, memory: 1G}}
allocations:
  - account: lab-a
    pool: box
    quota: {cpus: 16, memory: 64G}
    budget: {amount: 60, period: month}
"""

ROOT = "http://allotment.test/services/allotment/dashboard"
NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
READ = ["custom:allotment:read"]
MANAGE = ["custom:allotment:read", "custom:allotment:manage"]


def _client(service: Service, token: str | None = None, **kw: object) -> httpx.AsyncClient:
    headers = {"Authorization": f"token {token}"} if token else {}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=service.app),
        base_url=ROOT,
        headers=headers,
        **kw,  # type: ignore[arg-type]
    )


async def _ids(service: Service) -> tuple[dict[str, int], dict[str, int], int]:
    async with service.app.state.allotment.db.read() as session:
        accounts = dict((await session.execute(select(Account.path, Account.id))).all())
        users = dict((await session.execute(select(User.name, User.id))).all())
        pool = (await session.execute(select(Pool.id))).scalar_one()
    return accounts, users, pool


async def _seed(service: Service) -> int:
    """Jan 1–15 (Berlin): alice 2.00 and bob 1.00 a day in lab-a, dave 5.00 a day in lab-b;
    one job of bob's that held 16 CPUs at 4 % and 64G with a 2.1G peak for 6 h."""
    service.clock.advance((NOW - service.clock.now()).total_seconds())
    accounts, users, pool = await _ids(service)
    async with service.app.state.allotment.db.write() as session:
        for i in range(15):
            day = date(2026, 1, 1) + timedelta(days=i)
            for user, account, micros in (
                ("alice", "inst/lab-a", 2_000_000),
                ("bob", "inst/lab-a", 1_000_000),
                ("dave", "inst/lab-b", 5_000_000),
            ):
                session.add(
                    UsageDay(
                        day=day,
                        account_id=accounts[account],
                        user_id=users[user],
                        pool_id=pool,
                        profile_id=0,
                        amount=micros,
                        cpu_seconds=3600.0 * micros / 1_000_000,
                        memory_gib_seconds=0.0,
                        gpu_seconds=0.0,
                        share_seconds=0.0,
                        used_cpu_seconds=1800.0 * micros / 1_000_000 if user == "alice" else 0.0,
                    )
                )
        start = NOW - timedelta(hours=8)
        job = Workload(
            kind="job",
            name="sweep",
            user_id=users["bob"],
            account_id=accounts["inst/lab-a"],
            pool_id=pool,
            millicpus=16_000,
            memory=64 * 2**30,
            gpus={},
            target=int(WorkloadState.STOPPED),
            status=int(WorkloadState.STOPPED),
            created_at=start,
            updated_at=NOW,
            started_at=start,
            ended_at=start + timedelta(hours=6),
        )
        session.add(job)
        await session.flush()
        for h in range(6):
            session.add(
                LedgerEntry(
                    key=f"w:{job.id}:{h}",
                    kind="charge",
                    source="local",
                    workload_id=job.id,
                    account_id=accounts["inst/lab-a"],
                    user_id=users["bob"],
                    pool_id=pool,
                    start=start + timedelta(hours=h),
                    end=start + timedelta(hours=h + 1),
                    millicpus=16_000,
                    memory=64 * 2**30,
                    gpus={},
                    rate=22_400_000,
                    amount=22_400_000,
                    used_cpu_seconds=16 * 3600 * 0.04,
                    peak_memory=int(2.1 * 2**30),
                    created_at=NOW,
                )
            )
        return int(job.id)


@pytest.fixture
async def board(database_url: str, tmp_path: Path, hub: Hub) -> Service:
    async with running_service(
        database_url,
        tmp_path / "data",
        policy_text=POLICY.replace("LEADERBOARD", "members"),
        hub_api_url=hub.api_url,
    ) as service:
        yield service  # type: ignore[misc]


async def test_pages_show_the_ledger_to_the_cent(board: Service, hub: Hub) -> None:
    job = await _seed(board)
    async with _client(board, hub.token("bob", READ)) as c:
        me = await c.get("/")
        assert me.status_code == 200, me.text
        # bob's month in lab-a: 15 days × 1.00; his job: 6 × 22.40
        assert re.search(r"inst/lab-a</a></td><td class=\"num\">15.00 credits", me.text), me.text
        assert f"#{job} job" in me.text and "134.40 credits" in me.text
        account = await c.get("/accounts/inst/lab-a")
        assert account.status_code == 200
        text = account.text
        assert "45.00 credits of 60.00 credits spent (75 %)" in text
        # 45 spent in 14 d 13 h (Berlin): 3.0946 a day, so the 15 left last 4 d 20 h 20 min
        assert 'runs out <time datetime="2026-01-20T08:20:00Z">2026-01-20 09:20 CET' in text
        leaders = re.findall(r"<td>\d+</td><td>(\w+)</td><td class=\"num\">([\d.,]+) credits", text)
        assert leaders == [("alice", "30.00"), ("bob", "15.00")]
        assert "50 %" in text  # alice used half the CPU she asked for
        # The stacked plot's data is in the page, per user, per day.
        assert '"label": "alice"' in text or '"label":"alice"' in text
        waste = await c.get("/waste")
        assert "16 CPUs at 4.0 % for 6.0 h" in waste.text
        assert "64G requested, 2.1G peak" in waste.text
        assert "134.40 credits" in waste.text


async def test_members_see_their_accounts_only(board: Service, hub: Hub) -> None:
    await _seed(board)
    async with _client(board, hub.token("alice", READ)) as c:
        assert (await c.get("/accounts/inst/lab-a")).status_code == 200
        other = await c.get("/accounts/inst/lab-b")
        assert other.status_code == 404
        assert "5.00" not in other.text and "dave" not in other.text
        assert (await c.get("/accounts/inst")).status_code == 404  # not the institute's whole
        assert (await c.get("/accounts/nowhere")).status_code == 404
        assert (await c.get("/admin")).status_code == 403
        # Her waste page holds nothing of bob's.
        assert "sweep" not in (await c.get("/waste")).text
    async with _client(board, hub.token("carol", MANAGE)) as c:
        for path in ("inst", "inst/lab-a", "inst/lab-b"):
            assert (await c.get(f"/accounts/{path}")).status_code == 200
        assert "sweep" in (await c.get("/waste")).text  # she manages bob's lab's institute
    async with _client(board, board.admin_token) as c:
        admin = await c.get("/admin")
        assert admin.status_code == 200
        assert 'id="fairshare"' in admin.text and "inst/lab-b" in admin.text
        assert '"label": "box CPU"' in admin.text or '"label":"box CPU"' in admin.text


@pytest.mark.parametrize("setting", ["managers", "off"])
async def test_the_leaderboard_follows_the_policy(
    database_url: str, tmp_path: Path, hub: Hub, setting: str
) -> None:
    async with running_service(
        database_url,
        tmp_path / "data",
        policy_text=POLICY.replace("LEADERBOARD", setting),
        hub_api_url=hub.api_url,
    ) as service:
        await _seed(service)
        async with _client(service, hub.token("alice", READ)) as c:
            text = (await c.get("/accounts/inst/lab-a")).text
            assert 'id="leaderboard"' not in text and "30.00 credits" not in text
            # Nor does the usage plot name who spent what: one series for the account.
            assert '"label": "bob"' not in text and '"label":"bob"' not in text
            assert "all members" in text
        async with _client(service, hub.token("carol", MANAGE)) as c:
            text = (await c.get("/accounts/inst/lab-a")).text
            assert ('id="leaderboard"' in text) is (setting == "managers")


class _FakeHubOAuth(HubOAuthClient):
    """The code exchange answered without a hub: the browser test uses the real one."""

    token = ""

    async def token_for_code(self, code: str) -> str:
        assert code == "the-code"
        return self.token


async def test_login_cookie_and_state_check(board: Service, hub: Hub) -> None:
    oauth = _FakeHubOAuth(
        "service-allotment",
        "secret",
        "/services/allotment/oauth_callback",
        "/hub/api/oauth2/authorize",
        "http://127.0.0.1:9/hub/api/oauth2/token",
    )
    oauth.token = hub.token("alice", READ)
    board.app.state.dashboard.oauth = oauth
    async with _client(board, follow_redirects=False) as c:
        r = await c.get("/accounts/inst/lab-a")
        assert r.status_code == 302
        target = urlparse(r.headers["location"])
        assert target.path == "/hub/api/oauth2/authorize"
        query = parse_qs(target.query)
        assert query["client_id"] == ["service-allotment"]
        assert query["redirect_uri"] == ["/services/allotment/oauth_callback"]
        cookie = r.headers["set-cookie"]
        assert (
            "HttpOnly" in cookie
            and "SameSite=lax" in cookie
            and "Path=/services/allotment/" in cookie
        )
        # A state this browser did not start is refused.
        bad = await c.get("../oauth_callback", params={"code": "the-code", "state": "forged"})
        assert bad.status_code == 403
        ok = await c.get(
            "../oauth_callback", params={"code": "the-code", "state": query["state"][0]}
        )
        assert ok.status_code == 302
        assert ok.headers["location"] == "/services/allotment/dashboard/accounts/inst/lab-a"
        page = await c.get("/accounts/inst/lab-a")
        assert page.status_code == 200 and "Account inst/lab-a" in page.text
        # An altered cookie is no login.
        c.cookies.set("allotment-dashboard", c.cookies["allotment-dashboard"][:-2] + "xx")
        assert (await c.get("/")).status_code == 302


async def test_forms_refuse_a_missing_xsrf_token(board: Service, hub: Hub) -> None:
    token = hub.token("carol", MANAGE)
    async with _client(board, token, follow_redirects=False) as c:
        page = (await c.get("/accounts/inst/lab-a")).text
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page)
        assert xsrf, "a manager sees the forms"
        for body in ({"user": "erin", "role": "member"}, {"user": "erin", "_xsrf": "wrong"}):
            r = await c.post("/accounts/inst/lab-a/members/add", data=body)
            assert r.status_code == 403
        async with board.app.state.allotment.db.read() as session:
            erin = await session.execute(select(Membership).join(User).where(User.name == "erin"))
            assert erin.first() is None
        r = await c.post(
            "/accounts/inst/lab-a/members/add",
            data={"user": "erin", "role": "member", "_xsrf": xsrf.group(1)},
        )
        assert r.status_code == 303
        after = await c.get("/accounts/inst/lab-a")
        assert "erin is now a member of inst/lab-a." in after.text
        assert re.search(r"<td>erin</td><td>member</td>", after.text)
        r = await c.post(
            "/accounts/inst/shares",
            data={"account": "inst/lab-b", "shares": "7", "_xsrf": xsrf.group(1)},
        )
        assert r.status_code == 303
        assert (
            await c.post("/accounts/inst/lab-a/children", data={"name": "p1"})
        ).status_code == 403
        r = await c.post(
            "/accounts/inst/lab-a/children",
            data={"name": "p1", "shares": "3", "_xsrf": xsrf.group(1)},
        )
        assert r.status_code == 303
        assert (
            await c.post("/accounts/inst/lab-a/budget", data={"amount": "80"})
        ).status_code == 403
        r = await c.post(
            "/accounts/inst/lab-a/budget",
            data={"amount": "80", "period": "month", "pool": "box", "_xsrf": xsrf.group(1)},
        )
        assert r.status_code == 303
        budget = (await c.get("/accounts/inst/lab-a")).text
        assert "inst/lab-a now has a budget of 80.00 credits per month on box." in budget
        assert "of 80.00 credits spent" in budget
        lab = (await c.get("/accounts/inst/lab-a")).text
        assert "Created inst/lab-a/p1 with 3 shares." not in lab  # shown once
        r = await c.post(
            "/accounts/inst/lab-a/children",
            data={"name": "p2", "_xsrf": xsrf.group(1)},
        )
        lab = (await c.get("/accounts/inst/lab-a")).text
        assert "Created inst/lab-a/p2 with 1 share." in lab
        assert re.search(r'href="[^"]*/accounts/inst/lab-a/p1">inst/lab-a/p1</a>', lab)
        inst = (await c.get("/accounts/inst")).text
        assert "inst/lab-b" in inst and 'value="7"' in inst
    # A member may not: the API's rule, through the same function.
    async with _client(board, hub.token("alice", MANAGE), follow_redirects=False) as c:
        page = (await c.get("/accounts/inst/lab-a")).text
        assert 'action="/services/allotment/dashboard/accounts/inst/lab-a/members/add"' not in page
        xsrf_a = re.search(r'name="_xsrf" value="([^"]+)"', page)
        assert xsrf_a is None


async def test_the_service_root_leads_to_the_dashboard_and_its_files_ship(
    board: Service,
) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=board.app), base_url="http://allotment.test"
    ) as c:
        r = await c.get("/services/allotment/")
        assert (r.status_code, r.headers["location"]) == (302, "/services/allotment/dashboard/")
        chart = await c.get("/services/allotment/dashboard/static/chart.umd.min.js")
        assert chart.status_code == 200 and "Chart.js v4.6.1" in chart.text[:200]
        for name in ("dashboard.js", "dashboard.css", "chart.js-LICENSE.md"):
            assert (await c.get(f"/services/allotment/dashboard/static/{name}")).status_code == 200
        # Without a login and without a hub to send it to, the page says how to reach it.
        board.app.state.dashboard.oauth = None  # as outside a hub, whatever runs the tests
        page = await c.get("/services/allotment/dashboard/")
        assert page.status_code == 401 and "through JupyterHub" in page.text
