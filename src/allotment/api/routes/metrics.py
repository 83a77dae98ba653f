"""Prometheus metrics (``GET …/api/metrics``), for a scraper holding a token with the
``custom:allotment:metrics`` scope (a JupyterHub service's or a user's; administrators hold
it too).

Everything is read from the database at each scrape, so any API process answers for the
whole installation, whichever process runs the controller:

- the live workloads and what they request, by pool, account and state;
- what each account was charged and requested, from the ledger's daily totals (counters);
- the scheduler: when it last completed a cycle (the controller's heartbeat row), and how
  long that cycle took where this process runs the controller (the controller runs in a
  process of its own under ``allot serve``; its heartbeat holds the time, not the length);
- the reconciler's work in hand: workloads admitted or starting, and how long the oldest
  has waited (what readiness reads too);
- every budget in force: the fraction of it spent in its period.

Nothing in it names a user: a scraper sees accounts, pools and sums.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Text, cast, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from allotment.api.auth import ADMIN_PREFIX
from allotment.api.deps import AppState, StateDep, _bearer, _identity
from allotment.controller.view import load_policy_view
from allotment.db.budgets import budgets_in_force
from allotment.db.heartbeat import CONTROLLER
from allotment.db.tables import Account, Heartbeat, Pool, UsageDay, Workload
from allotment.domain.permissions import Scope, expand_scopes
from allotment.domain.workloads import TERMINAL, WorkloadState
from allotment.errors import Forbidden

__all__ = ["router"]

router = APIRouter(tags=["metrics"])

GIB = 2**30
MICROS = 1_000_000


async def scraper(request: Request, state: StateDep) -> str:
    """Who scrapes: any token (a hub service's too) that holds the metrics scope."""
    token = _bearer(request)
    if token.startswith(ADMIN_PREFIX):
        identity = await _identity(state, token, request)
    else:
        identity = await state.verifier.hub_user(token)
    if Scope.METRICS not in expand_scopes(identity.scopes):
        raise Forbidden(
            f"Scraping metrics needs a token with the {Scope.METRICS.value} scope: give the "
            "scraper's JupyterHub service (or user) a role that grants it."
        )
    return identity.name


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


async def _names(session: AsyncSession) -> tuple[dict[int, str], dict[int, str]]:
    accounts = {i: p for i, p in await session.execute(select(Account.id, Account.path))}
    pools = {i: n for i, n in await session.execute(select(Pool.id, Pool.name))}
    return accounts, pools


def _labels(
    pools: dict[int, str], accounts: dict[int, str], pool: int | None, account: int, status: int
) -> list[str]:
    where = pools.get(pool, "") if pool is not None else ""
    return [where, accounts.get(account, f"#{account}"), WorkloadState(status).label]


async def _workloads(
    session: AsyncSession, accounts: dict[int, str], pools: dict[int, str]
) -> list[Metric]:
    labels = ["pool", "account", "state"]
    count = GaugeMetricFamily(
        "allotment_workloads", "Workloads not yet ended, by pool, account and state.", labels=labels
    )
    cpus = GaugeMetricFamily(
        "allotment_requested_cpus", "CPU cores the workloads not yet ended request.", labels=labels
    )
    memory = GaugeMetricFamily(
        "allotment_requested_memory_bytes",
        "Memory the workloads not yet ended request.",
        labels=labels,
    )
    gpus = GaugeMetricFamily(
        "allotment_requested_gpus",
        "GPUs the workloads not yet ended request, by model.",
        labels=[*labels, "model"],
    )
    w = Workload
    live = w.status.notin_([int(s) for s in TERMINAL])
    rows = await session.execute(
        select(
            w.status,
            w.pool_id,
            w.account_id,
            func.count(),
            func.sum(w.millicpus),
            func.sum(w.memory),
        )
        .where(live)
        .group_by(w.status, w.pool_id, w.account_id)
    )
    for status, pool, account, n, millicpus, mem in rows:
        key = _labels(pools, accounts, pool, account, status)
        count.add_metric(key, n)
        cpus.add_metric(key, int(millicpus or 0) / 1000)
        memory.add_metric(key, int(mem or 0))
    by_model: dict[tuple[str, ...], float] = defaultdict(float)
    requests = await session.execute(
        select(w.status, w.pool_id, w.account_id, w.gpus).where(
            live, w.gpus.is_not(None), cast(w.gpus, Text) != "{}"
        )
    )
    for status, pool, account, models in requests:
        key = _labels(pools, accounts, pool, account, status)
        for model, k in (models or {}).items():
            by_model[(*key, model)] += k
    for labels_, total in sorted(by_model.items()):
        gpus.add_metric(list(labels_), total)
    return [count, cpus, memory, gpus]


async def _charged(
    session: AsyncSession, accounts: dict[int, str], pools: dict[int, str]
) -> list[Metric]:
    labels = ["account", "pool"]
    cost = CounterMetricFamily(
        "allotment_cost",
        "Charged to the account (its own workloads, not its subtree's) on the pool, in the "
        "policy's currency, since the ledger began; running workloads' charges so far included.",
        labels=labels,
    )
    cpu = CounterMetricFamily(
        "allotment_requested_cpu_seconds", "CPU core-seconds charged.", labels=labels
    )
    gpu = CounterMetricFamily(
        "allotment_requested_gpu_seconds", "GPU-seconds charged.", labels=labels
    )
    u = UsageDay
    rows = await session.execute(
        select(
            u.account_id,
            u.pool_id,
            func.sum(u.amount),
            func.sum(u.cpu_seconds),
            func.sum(u.gpu_seconds),
        ).group_by(u.account_id, u.pool_id)
    )
    for account, pool, amount, cpu_s, gpu_s in rows:
        key = [accounts.get(account, f"#{account}"), pools.get(pool, "")]
        cost.add_metric(key, int(amount or 0) / MICROS)
        cpu.add_metric(key, float(cpu_s or 0))
        gpu.add_metric(key, float(gpu_s or 0))
    return [cost, cpu, gpu]


async def _controller(session: AsyncSession, state: AppState) -> list[Metric]:
    now = state.clock.now()
    beat = (
        await session.execute(select(Heartbeat.at).where(Heartbeat.name == CONTROLLER))
    ).scalar_one_or_none()
    out: list[Metric] = []
    if beat is not None:
        out.append(
            GaugeMetricFamily(
                "allotment_scheduler_last_cycle_timestamp_seconds",
                "When the scheduler last completed a cycle (or its controller started).",
                value=beat.timestamp(),
            )
        )
        out.append(
            GaugeMetricFamily(
                "allotment_scheduler_last_cycle_age_seconds",
                "Seconds since the scheduler last completed a cycle.",
                value=max((now - beat).total_seconds(), 0.0),
            )
        )
    if state.controller is not None:
        out.append(
            GaugeMetricFamily(
                "allotment_scheduler_cycle_seconds",
                "How long the last scheduling cycle took (only where this process runs the "
                "controller).",
                value=state.controller.scheduling.took,
            )
        )
    w = Workload
    waiting = (int(WorkloadState.ADMITTED), int(WorkloadState.STARTING))
    n, oldest = (
        await session.execute(
            select(func.count(), func.min(w.updated_at)).where(w.status.in_(waiting))
        )
    ).one()
    out.append(
        GaugeMetricFamily(
            "allotment_reconciler_backlog",
            "Workloads admitted or starting: the reconciler's work in hand.",
            value=int(n),
        )
    )
    out.append(
        GaugeMetricFamily(
            "allotment_reconciler_oldest_wait_seconds",
            "How long the longest waiting of them has waited; 0 when none waits.",
            value=0.0 if oldest is None else max((now - oldest).total_seconds(), 0.0),
        )
    )
    return out


async def _budgets(session: AsyncSession, state: AppState) -> list[Metric]:
    labels = ["account", "pool", "period"]
    fraction = GaugeMetricFamily(
        "allotment_budget_spent_ratio",
        "Share of each budget in force spent in its current period (1 = all of it). pool is "
        "empty for a budget across pools.",
        labels=labels,
    )
    spent = GaugeMetricFamily(
        "allotment_budget_spent",
        "Spent in the budget's current period, in the currency.",
        labels=labels,
    )
    amount = GaugeMetricFamily(
        "allotment_budget_amount", "The budget per period, in the currency.", labels=labels
    )
    view = await session.run_sync(load_policy_view, state.policy_views)
    if view is not None:
        for b in await budgets_in_force(session, view.policy, state.clock.now()):
            key = [b.account, b.pool or "", b.period.period]
            fraction.add_metric(key, b.fraction)
            spent.add_metric(key, b.spent / MICROS)
            amount.add_metric(key, b.amount / MICROS)
    return [fraction, spent, amount]


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
)
async def metrics(state: StateDep, _: Annotated[str, Depends(scraper)]) -> Response:
    """Metrics in Prometheus' text format, for a token with `custom:allotment:metrics`."""
    async with state.db.read() as session:
        accounts, pools = await _names(session)
        families = [
            *await _workloads(session, accounts, pools),
            *await _charged(session, accounts, pools),
            *await _controller(session, state),
            *await _budgets(session, state),
        ]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
