"""Prometheus metrics (`GET /metrics`) on both databases: a valid exposition whose values are
the live workloads, the ledger's daily totals, the controller's heartbeat, the reconciler's
backlog and the budgets; and only a token with custom:allotment:metrics (or an
administrator's) may scrape, checked with a real JupyterHub."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select, update

from allotment.db.heartbeat import CONTROLLER, beat
from allotment.db.tables import Account, Pool, UsageDay, User, Workload
from allotment.domain.workloads import WorkloadState
from tests.support.hub import METRICS_USER, Hub
from tests.support.service import Service, running_service

POLICY = """
currency: EUR
accounts:
  lab: {members: [bob]}
  other: {members: [erin]}
pools:
  box:
    nodes: [{name: n1, cpus: 8, memory: 32G, gpus: {a100: 2}}]
    rates: {cpu: 1.0}
profiles:
  small: {pool: box, size: {cpus: 2, memory: 4G}}
  gpu: {pool: box, size: {cpus: 1, memory: 1G, gpus: {a100: 1}}}
allocations:
  - {account: lab, pool: box, budget: {amount: 100, period: month}}
"""


async def _submit(svc: Service, profile: str, account: str) -> int:
    async with svc.admin() as c:
        r = await c.post(
            "workloads", json={"profile": profile, "account": account, "command": ["true"]}
        )
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition by name and labels; fails on a malformed one."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_the_exposition_counts_workloads_charges_backlog_and_budgets(
    database_url: str, tmp_path: Path
) -> None:
    async with running_service(database_url, tmp_path, policy_text=POLICY) as svc:
        svc.clock.advance(14 * 86400 + 3600)  # 15 January, 01:00
        now = svc.clock.now()
        pending = [await _submit(svc, "small", "lab") for _ in range(2)]
        running = await _submit(svc, "gpu", "lab")
        admitted = await _submit(svc, "small", "other")
        db = svc.app.state.allotment.db
        async with db.write() as session:
            await session.execute(
                update(Workload)
                .where(Workload.id == running)
                .values(status=int(WorkloadState.RUNNING), node="n1", started_at=now)
            )
            await session.execute(
                update(Workload)
                .where(Workload.id == admitted)
                .values(status=int(WorkloadState.ADMITTED), updated_at=now - timedelta(seconds=30))
            )
            ids = {p: i for p, i in await session.execute(select(Account.path, Account.id))}
            bob = (await session.execute(select(User.id).where(User.name == "bob"))).scalar_one()
            box = (await session.execute(select(Pool.id))).scalar_one()
            for day, amount in [(date(2026, 1, 2), 20_000_000), (date(2026, 1, 14), 5_500_000)]:
                session.add(
                    UsageDay(
                        day=day,
                        account_id=ids["lab"],
                        user_id=bob,
                        pool_id=box,
                        profile_id=0,
                        amount=amount,
                        cpu_seconds=7200.0,
                        memory_gib_seconds=0.0,
                        gpu_seconds=3600.0,
                        share_seconds=0.0,
                        used_cpu_seconds=0.0,
                    )  # fmt: skip
                )
            # Last month's: counted in the cost, not in this month's budget.
            session.add(
                UsageDay(
                    day=date(2025, 12, 31),
                    account_id=ids["lab"],
                    user_id=bob,
                    pool_id=box,
                    profile_id=0,
                    amount=1_000_000,
                    cpu_seconds=0.0,
                    memory_gib_seconds=0.0,
                    gpu_seconds=0.0,
                    share_seconds=0.0,
                    used_cpu_seconds=0.0,
                )  # fmt: skip
            )
        await beat(db, CONTROLLER, now - timedelta(seconds=7), 60.0)
        async with svc.admin() as c:
            r = await c.get("metrics")
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/plain")
        got = samples(r.text)

    def at(name: str, **labels: str) -> float:
        return got[(name, tuple(sorted(labels.items())))]

    lab = {"pool": "box", "account": "lab"}
    assert at("allotment_workloads", state="pending", **lab) == 2
    assert at("allotment_requested_cpus", state="pending", **lab) == 4
    assert at("allotment_requested_memory_bytes", state="pending", **lab) == 8 * 2**30
    assert at("allotment_workloads", state="running", **lab) == 1
    assert at("allotment_requested_gpus", state="running", model="a100", **lab) == 1
    assert at("allotment_workloads", state="admitted", pool="box", account="other") == 1
    assert len([k for k in got if k[0] == "allotment_workloads"]) == 3  # nothing ended counts
    assert at("allotment_cost_total", account="lab", pool="box") == 26.5
    assert at("allotment_requested_cpu_seconds_total", account="lab", pool="box") == 14400
    assert at("allotment_requested_gpu_seconds_total", account="lab", pool="box") == 7200
    assert at("allotment_scheduler_last_cycle_age_seconds") == 7
    assert at("allotment_scheduler_last_cycle_timestamp_seconds") == now.timestamp() - 7
    assert at("allotment_reconciler_backlog") == 1
    assert at("allotment_reconciler_oldest_wait_seconds") == 30
    budget = {"account": "lab", "pool": "box", "period": "month"}
    assert at("allotment_budget_spent_ratio", **budget) == pytest.approx(0.255)
    assert at("allotment_budget_spent", **budget) == 25.5
    assert at("allotment_budget_amount", **budget) == 100
    assert not any("bob" in str(k) for k in got)  # sums only: no user is named
    assert pending


@pytest.mark.jupyterhub
async def test_only_a_token_with_the_metrics_scope_scrapes(
    database_url: str, tmp_path: Path, hub: Hub
) -> None:
    async with running_service(
        database_url, tmp_path, policy_text=POLICY, hub_api_url=hub.api_url
    ) as svc:
        async with svc.client() as c:
            assert (await c.get("metrics")).status_code == 401
        for token in (hub.token("bob"), hub.other_service_token, hub.spawner_token):
            async with svc.client(token) as c:
                r = await c.get("metrics")
            assert r.status_code == 403, r.text
            assert "custom:allotment:metrics" in r.json()["detail"]
        for token in (hub.metrics_token, hub.token("hubadmin"), svc.admin_token):
            async with svc.client(token) as c:
                r = await c.get("metrics")
            assert r.status_code == 200, r.text
            assert samples(r.text)  # a valid exposition
        # The scope is for scraping alone: nothing else of the API, for a service's token or
        # a user's token that holds only it.
        only = hub.token(METRICS_USER, ["custom:allotment:metrics"])
        for token in (hub.metrics_token, only):
            async with svc.client(token) as c:
                assert (await c.get("metrics")).status_code == 200
                for path in ("workloads", "usage", "me", "accounts"):
                    r = await c.get(path)
                    assert r.status_code == 403, (path, r.text)
