"""The meter: a workload's cost so far and per hour, its account's budget left, and warnings
before a budget or runtime limit stops it. Sessions show it in JupyterLab's status bar, with
the Dask clusters they own ("+ 8 Dask workers: 1.20 credits/h")."""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import partial

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from allotment.api.deps import CallerDep, StateDep
from allotment.api.routes.workloads import WorkloadId, aware, visible_workload
from allotment.config.models import Policy
from allotment.controller.culler import idle_deadline
from allotment.controller.quote import BudgetBook, rates_of
from allotment.controller.view import load_policy_view
from allotment.db.dask_control import SessionCluster, session_clusters
from allotment.db.ledger import workload_cost
from allotment.db.workloads import record_activity
from allotment.domain.ledger import MICROS
from allotment.domain.meter import meter_warnings, runtime_end
from allotment.domain.permissions import Scope
from allotment.domain.resources import Resources
from allotment.domain.workloads import WorkloadState
from allotment.errors import Conflict, Forbidden, NotFound
from allotment.schemas import MeterCluster, MeterOut

__all__ = ["router"]

router = APIRouter(tags=["meter"])


@router.get("/workloads/{workload_id}/meter", response_model=MeterOut)
async def meter(workload_id: WorkloadId, caller: CallerDep, state: StateDep) -> MeterOut:
    now = state.clock.now()
    async with state.db.read() as session:
        row = await visible_workload(session, caller, workload_id)
        view = await session.run_sync(load_policy_view, state.policy_views)
        if view is None or row.pool is None or row.pool not in view.policy.pools:
            raise NotFound(f"Workload {workload_id}'s pool is no longer in the policy.")
        w = row.workload
        rates = rates_of(view.policy, row.pool)
        hourly = rates.hourly(Resources(w.millicpus, w.memory, w.gpus or {}))
        running = w.ended_at is None and w.started_at is not None
        budget, blocked = await BudgetBook(session, view.policy, now).tightest(
            row.account, row.pool, hourly if running else 0.0
        )
        # What the ledger has charged, as of the meter's last pass: the one number the
        # budget, the reports and this meter all read.
        cost = await workload_cost(session, w.id) / MICROS
        owned = (
            await session.run_sync(partial(session_clusters, session_id=w.id))
            if w.kind == "session"
            else []
        )
    stops_at = runtime_end(w.started_at, w.max_runtime)
    deadline = None
    if running and w.kind == "session" and w.started_at is not None:
        deadline = idle_deadline(w.started_at, w.last_activity, view.policy.sessions.cull_idle)
    warnings = meter_warnings(
        now,
        running=running,
        stops_at=stops_at,
        idle_deadline=deadline,
        cull_warning=timedelta(seconds=view.policy.sessions.cull_warning),
        budget=budget,
        blocked=bool(blocked),
    )
    return MeterOut(
        workload=w.id,
        status=WorkloadState(w.status).label,
        currency=view.policy.currency,
        started_at=w.started_at,
        ended_at=w.ended_at,
        cost=round(cost, 6),
        cost_per_hour=round(hourly, 6),
        budget=budget,
        stops_at=stops_at,
        warnings=warnings,
        clusters=[_cluster(c, view.policy) for c in owned],
    )


def _cluster(c: SessionCluster, policy: Policy) -> MeterCluster:
    """A cluster the session owns: its running workers, and what its scheduler and they cost
    per hour together (each at its own pool's rates)."""
    hourly = sum(
        rates_of(policy, pool).hourly(Resources(mc, mem, gpus))
        for pool, mc, mem, gpus, _ in c.running
        if pool in policy.pools
    )
    workers = sum(1 for *_, worker in c.running if worker)
    return MeterCluster(name=c.name, workers=workers, cost_per_hour=round(hourly, 6))


class ActivityIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    last_activity: datetime = Field(description="Last browser or kernel activity (with a zone).")
    busy: bool = Field(False, description="A kernel is running code now: in use now.")


@router.post("/workloads/{workload_id}/activity", status_code=204, response_class=Response)
async def report_activity(
    workload_id: WorkloadId, body: ActivityIn, caller: CallerDep, state: StateDep
) -> Response:
    """A session says when it was last used (its server extension does, every minute); the
    culler stops sessions unused for `sessions.cull_idle`. Only the owner's tokens may."""
    reported = aware(body.last_activity, "last_activity")
    if not caller.principal.has(Scope.SUBMIT):
        raise Forbidden("This token may read but not report activity (it lacks submit).")
    now = state.clock.now()
    # Never later than now: a time in the future would keep a session from being culled.
    at = now if body.busy else min(reported, now)
    async with state.db.write() as session:
        row = await visible_workload(session, caller, workload_id)
        if row.user != caller.name:
            raise Forbidden(f"Only {row.user}'s session may report its activity.")
        if row.workload.kind != "session":
            raise Conflict(
                f"Workload {workload_id} is a {row.workload.kind}, not a session: only sessions "
                "report activity (nothing culls the others)."
            )
        await session.run_sync(lambda s: record_activity(s.connection(), [workload_id], at))
    return Response(status_code=204)
