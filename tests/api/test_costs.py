"""The quote before a launch, on both databases: free capacity, cost per hour, expected start
and place when the pool is full, budget and quota left, and what may be quoted to whom.

Spending is the ledger's: each test writes what the meter would have (an entry per charge and
the day's total), since no meter runs here."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select, update

from allotment.db.tables import LedgerEntry, UsageDay, Workload
from allotment.domain.workloads import WorkloadState
from tests.support.service import Service, running_service

POLICY = """
currency: EUR
accounts:
  lab: {members: [alice]}
  other: {members: [bob]}
pools:
  box:
    nodes: [{name: n1, cpus: 4, memory: 16G}]
    rates: {cpu: 1.0, memory: 0.5}
profiles:
  small:
    display_name: Small
    description: two cores
    pool: box
    size: {cpus: 2, memory: 4G}
    max_runtime: 2h
  lab-only:
    pool: box
    size: {cpus: 1, memory: 1G}
    accounts: [lab]
allocations:
  - account: lab
    pool: box
    quota: {cpus: 3, memory: 8G}
    budget: {amount: 10, period: day}
"""


async def _run_for(service: Service, workload: int, hours: float, *, ended: bool) -> None:
    now = service.clock.now()
    async with service.app.state.allotment.db.write() as session:
        await session.execute(
            update(Workload)
            .where(Workload.id == workload)
            .values(
                status=int(WorkloadState.STOPPED if ended else WorkloadState.RUNNING),
                node="n1",
                started_at=now - timedelta(hours=hours),
                ended_at=now if ended else None,
            )
        )


async def _charge(service: Service, workload: int, start: datetime, end: datetime) -> None:
    """What the meter writes for ``workload`` over [start, end) (one day): a ledger entry, and
    the amount added to that day's total (the small profile costs 4.0 an hour)."""
    amount = round(4.0 * (end - start).total_seconds() / 3600 * 1e6)
    async with service.app.state.allotment.db.write() as session:
        w = (await session.execute(select(Workload).where(Workload.id == workload))).scalar_one()
        session.add(
            LedgerEntry(
                key=f"w:{workload}:{start.isoformat()}",
                kind="charge",
                source="local",
                workload_id=workload,
                account_id=w.account_id,
                user_id=w.user_id,
                pool_id=w.pool_id,
                profile_id=w.profile_id,
                start=start,
                end=end,
                millicpus=w.millicpus,
                memory=w.memory,
                gpus=w.gpus or {},
                rate=4_000_000,
                amount=amount,
                created_at=end,
            )
        )
        key = (start.date(), w.account_id, w.user_id, w.pool_id or 0, w.profile_id or 0)
        day = await session.get(UsageDay, key)
        if day is None:
            session.add(
                UsageDay(
                    day=key[0],
                    account_id=key[1],
                    user_id=key[2],
                    pool_id=key[3],
                    profile_id=key[4],
                    amount=amount,
                )
            )
        else:
            day.amount += amount


async def _submit(service: Service, account: str) -> int:
    async with service.admin() as c:
        r = await c.post(
            "workloads", json={"profile": "small", "account": account, "command": ["true"]}
        )
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


async def test_quote_of_an_idle_pool(database_url: str, tmp_path: Path) -> None:
    async with running_service(database_url, tmp_path, policy_text=POLICY) as service:
        async with service.admin() as c:
            r = await c.get("quote", params={"account": "lab"})
        assert r.status_code == 200, r.text
        q = r.json()
        assert (q["account"], q["currency"]) == ("lab", "EUR")
        small = {p["profile"]: p for p in q["profiles"]}["small"]
        assert small["starts_now"] and small["position"] is None
        assert small["wait_seconds"] == 0
        assert (small["free_cpus"], small["free_memory"]) == (4.0, 16 * 2**30)
        # 2 CPUs × 1.0 + 4 GiB × 0.5
        assert small["cost_per_hour"] == 4.0
        assert small["budget"] == {
            "account": "lab",
            "period": "day",
            "amount": 10.0,
            "spent": 0.0,
            "left": 10.0,
            "hours_left": 2.5,
            "hard_stop": True,
        }
        assert small["quota"] == {"account": "lab", "cpus": 1.0, "memory": 4 * 2**30, "gpus": {}}


async def test_a_full_pool_quotes_a_place_and_the_end_of_what_runs(
    database_url: str, tmp_path: Path
) -> None:
    async with running_service(database_url, tmp_path, policy_text=POLICY) as service:
        # Two sessions of other's fill the box; one started 30 min ago, one 90 min ago: with
        # a 2 h limit they end in 90 and 30 minutes.
        first, second = await _submit(service, "other"), await _submit(service, "other")
        await _run_for(service, first, 0.5, ended=False)
        await _run_for(service, second, 1.5, ended=False)
        waiting = await _submit(service, "other")
        async with service.admin() as c:
            q = (await c.get("quote", params={"account": "lab", "profile": "small"})).json()
        (small,) = q["profiles"]
        assert not small["starts_now"]
        assert (small["queued"], small["position"]) == (1, 2)
        assert small["free_cpus"] == 0
        # The one waiting takes the box at +30 min (second's end); ours the next end, +90 min.
        assert small["wait_seconds"] == 90 * 60
        assert waiting > second


async def test_spending_in_the_period_leaves_less_budget_and_a_hard_stop_blocks(
    database_url: str, tmp_path: Path
) -> None:
    async with running_service(database_url, tmp_path, policy_text=POLICY) as service:
        service.clock.advance(12 * 3600)  # noon; the budget is per day
        now = service.clock.now()
        yesterday, today = await _submit(service, "lab"), await _submit(service, "lab")
        async with service.app.state.allotment.db.write() as session:
            # 23:00 to 00:30: only the half hour after midnight counts (2.0 at 4.0/h).
            await session.execute(
                update(Workload)
                .where(Workload.id == yesterday)
                .values(
                    status=int(WorkloadState.STOPPED),
                    node="n1",
                    started_at=now - timedelta(hours=13),
                    ended_at=now - timedelta(hours=11.5),
                )
            )
        midnight = now - timedelta(hours=12)
        await _charge(service, yesterday, now - timedelta(hours=13), midnight)
        await _charge(service, yesterday, midnight, now - timedelta(hours=11.5))
        await _run_for(service, today, 1, ended=True)  # 4.0
        await _charge(service, today, now - timedelta(hours=1), now)
        async with service.admin() as c:
            q = (await c.get("quote", params={"account": "lab", "profile": "small"})).json()
        (p,) = q["profiles"]
        assert (p["budget"]["spent"], p["budget"]["left"], p["budget"]["hours_left"]) == (
            6.0,
            4.0,
            1.0,
        )
        # Two hours of small (its maximum runtime) cost 8.0, more than the 4.0 left: the
        # scheduler would hold it, and the quote says so.
        assert p["blocked"] == (
            "its cost up to its maximum runtime (8.00 EUR) would go beyond the 4.00 EUR left "
            "of lab's budget on pool 'box' for 1 January; ask an administrator to raise it"
        )
        assert not p["starts_now"]
        # One more hour, still running: 10 of 10 spent, and the budget stops new work.
        running = await _submit(service, "lab")
        await _run_for(service, running, 1, ended=False)
        await _charge(service, running, now - timedelta(hours=1), now)
        async with service.admin() as c:
            q = (await c.get("quote", params={"account": "lab", "profile": "small"})).json()
        (p,) = q["profiles"]
        assert (p["budget"]["spent"], p["budget"]["left"]) == (10.0, 0.0)
        assert p["blocked"] == (
            "lab has spent 10.00 of its 10.00 EUR on pool 'box' for 1 January; ask an "
            "administrator to raise it"
        )
        assert not p["starts_now"]


async def test_profiles_quoted_are_the_accounts_own(database_url: str, tmp_path: Path) -> None:
    async with running_service(database_url, tmp_path, policy_text=POLICY) as service:
        async with service.admin() as c:
            lab = (await c.get("quote", params={"account": "lab"})).json()
            other = (await c.get("quote", params={"account": "other"})).json()
            r = await c.get("quote", params={"account": "other", "profile": "lab-only"})
            missing = await c.get("quote", params={"account": "nope"})
        assert {p["profile"] for p in lab["profiles"]} == {"lab-only", "small"}
        assert {p["profile"] for p in other["profiles"]} == {"small"}
        assert other["profiles"][0]["budget"] is None
        assert r.status_code == 404 and "lab-only" in r.json()["detail"]
        assert missing.status_code == 404


async def test_the_meter_counts_cost_so_far_and_warns_before_a_stop(
    database_url: str, tmp_path: Path
) -> None:
    async with running_service(database_url, tmp_path, policy_text=POLICY) as service:
        service.clock.advance(12 * 3600)
        w = await _submit(service, "lab")
        async with service.admin() as c:
            pending = (await c.get(f"workloads/{w}/meter")).json()
        assert (pending["status"], pending["cost"], pending["warnings"]) == ("pending", 0.0, [])
        # Running for 1 h 50 min of its 2 h limit: 7.33 spent at 4.0/h, 10 minutes left.
        await _run_for(service, w, 11 / 6, ended=False)
        now = service.clock.now()
        await _charge(service, w, now - timedelta(hours=11 / 6), now)
        async with service.admin() as c:
            m = (await c.get(f"workloads/{w}/meter")).json()
        assert (m["cost"], m["cost_per_hour"], m["currency"]) == (
            round(4.0 * 11 / 6, 6),
            4.0,
            "EUR",
        )
        assert m["budget"]["left"] == round(10 - 4.0 * 11 / 6, 6)
        assert m["stops_at"].startswith("2026-01-01T12:10:00")
        assert any("maximum runtime ends in 10 min" in x for x in m["warnings"]), m["warnings"]
        # 2.67 left at 4.0/h: 40 minutes, more than the warning's 15: no budget warning yet.
        assert not any("budget" in x for x in m["warnings"])
        service.clock.advance(35 * 60)  # 0.33 left: 5 minutes
        await _charge(service, w, now, service.clock.now())
        async with service.admin() as c:
            m = (await c.get(f"workloads/{w}/meter")).json()
        assert any("budget of lab runs out in about 5 min" in x for x in m["warnings"]), m


async def test_the_meter_is_its_readers_only(database_url: str, tmp_path: Path) -> None:
    async with running_service(database_url, tmp_path, policy_text=POLICY) as service:
        w = await _submit(service, "lab")
        async with service.client("not-a-token") as c:
            assert (await c.get(f"workloads/{w}/meter")).status_code in (401, 503)
        async with service.admin() as c:
            assert (await c.get("workloads/999999/meter")).status_code == 404
