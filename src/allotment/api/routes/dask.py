"""Dask clusters: create, list, get, scale, adapt, stop, the client's heartbeat, the owner's
credentials, and the reports of each cluster's scheduler.

A cluster is a ``dask_clusters`` row and workloads: its scheduler, made here with the row in
one transaction, and its workers, which the controller makes and stops to match ``workers``
(``controller/dask_clusters.py``). The service builds every command they run
(``domain.dask_commands``); users never submit a ``dask-*`` workload themselves.

A cluster is its owner's alone: to anyone else, managers and administrators included, it does
not exist (404), since its credentials run code as its owner. The one exception is an
administrator's list of a named user's clusters. Its scheduler reports with the cluster's own
token, not through JupyterHub: it holds no hub token.
"""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, cast
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from allotment.api.auth import token_sha256
from allotment.api.dask_credentials import DASK_TOKEN_PREFIX, new_cluster_secrets
from allotment.api.deps import AppState, Caller, CallerDep, IdempotencyKey, StateDep
from allotment.config.models import DaskSpec, Policy
from allotment.controller.quote import rates_of
from allotment.controller.view import load_policy_view
from allotment.db import dask as clusters
from allotment.db import repository as repo
from allotment.db.catalog import Catalog, ProfileEntry
from allotment.db.dask import ClusterRow, ClusterWorkload
from allotment.db.tables import WORKLOADS, DaskCluster, Workload
from allotment.domain.accounts import is_within
from allotment.domain.bounds import check_cpus, check_memory
from allotment.domain.dask import (
    ClusterState,
    check_cluster_name,
    clamp_workers,
    dashboard_path,
    idle_worker_ids,
)
from allotment.domain.dask_commands import scheduler_launch
from allotment.domain.permissions import Scope
from allotment.domain.profiles import choose_size, fits_some_node
from allotment.domain.quantities import parse_bytes
from allotment.domain.resources import Resources
from allotment.domain.submission import NewWorkload, charged_account, sentence
from allotment.domain.workloads import TERMINAL, WorkloadState
from allotment.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    PublicError,
    Unauthenticated,
)
from allotment.schemas import (
    DaskAdapt,
    DaskClusterCreate,
    DaskClusterOut,
    DaskClusterState,
    DaskCredentials,
    DaskScale,
    DaskSchedulerOrders,
    DaskSchedulerReport,
    DaskWorkerSize,
)

__all__ = ["DaskSite", "TooManyWorkers", "router"]

router = APIRouter(tags=["dask"])

ClusterName = Annotated[str, Path(min_length=1, max_length=63, description="The cluster's name.")]
#: How many of a user's clusters a list shows at most (newest first); live ones are far fewer
#: (``dask.clusters_per_user``).
LIST_LIMIT = 1000
#: The scheduler's report: seconds between two.
REPORT_EVERY = 5.0


@dataclass(frozen=True, slots=True)
class DaskSite:
    """What the routes need of the service's own addresses (``create_app`` sets it)."""

    #: The service's base URL path (``/services/allotment/``): dashboards are proxied under it.
    base_url: str
    #: Where a scheduler reports when the policy's ``dask.service_url`` is unset.
    listen_url: str


def _site(request: Request) -> DaskSite:
    site: DaskSite = request.app.state.dask_site
    return site


SiteDep = Annotated[DaskSite, Depends(_site)]


class TooManyWorkers(PublicError):
    status = 400
    title = "Too many workers"


# --- reading ----------------------------------------------------------------------------------


async def _policy(session: AsyncSession, state: AppState) -> Policy:
    view = await session.run_sync(load_policy_view, state.policy_views)
    return view.policy if view is not None else Policy()


def _hourly(policy: Policy, w: ClusterWorkload) -> float:
    """What a started workload costs per hour at its pool's rates (0 when the pool is gone)."""
    if w.pool is None or w.pool not in policy.pools:
        return 0.0
    return rates_of(policy, w.pool).hourly(Resources(w.millicpus, w.memory, w.gpus))


def _started(w: ClusterWorkload) -> bool:
    """Running, or being stopped and not yet ended: charged."""
    return w.status in (WorkloadState.RUNNING, WorkloadState.STOPPING)


def cluster_out(
    row: ClusterRow, workloads: Sequence[ClusterWorkload], policy: Policy, base_url: str
) -> DaskClusterOut:
    """A cluster's answer, with what its workloads are doing now."""
    c = row.cluster
    state = ClusterState(c.state)
    workers = [w for w in workloads if w.kind == "dask-worker"]
    scheduler = next((w for w in workloads if w.kind == "dask-scheduler"), None)
    running = sum(1 for w in workers if w.status == WorkloadState.RUNNING)
    staying = sum(1 for w in workers if w.live and w.status == WorkloadState.RUNNING)
    waiting = sorted(
        (w for w in workers if w.waiting),
        key=lambda w: (w.position is None, w.position or 0, w.id),
    )
    requested = len(waiting)
    if state in clusters.WORKING:
        # Asked for but not made yet (the controller makes them once the scheduler runs).
        requested = max(requested, c.workers - staying)
    reason, expected = None, None
    if waiting:
        reason, expected = waiting[0].reason, waiting[0].expected_start
    elif requested and scheduler is not None and scheduler.waiting:
        reason = f"its scheduler is {scheduler.status.label}: {scheduler.reason}"
        expected = scheduler.expected_start
    cost = sum(_hourly(policy, w) for w in workloads if _started(w))
    adapt = (
        DaskAdapt(minimum=c.adapt_minimum or 0, maximum=c.adapt_maximum)
        if c.adapt_maximum is not None
        else None
    )
    link = None
    if c.dashboard and not state.ended:
        link = dashboard_path(base_url, c.id) + "/status"
    return DaskClusterOut(
        id=c.id,
        name=c.name,
        user=row.user,
        account=row.account,
        profile=row.profile,
        state=cast(DaskClusterState, state.label),
        reason=c.reason,
        worker=DaskWorkerSize.model_validate(c.worker),
        workers=c.workers,
        adapt=adapt,
        running=running,
        requested=requested,
        waiting_reason=reason,
        expected_start=expected,
        scheduler=c.scheduler_id,
        address=c.address if not state.ended else None,
        dashboard_link=link,
        session=c.session_id,
        shutdown_on_close=c.shutdown_on_close,
        cost_per_hour=round(cost, 6),
        currency=policy.currency,
        idle_since=c.idle_since,
        created_at=c.created_at,
        ended_at=c.ended_at,
    )


async def _answers(
    session: AsyncSession, state: AppState, site: DaskSite, rows: Sequence[ClusterRow]
) -> list[DaskClusterOut]:
    policy = await _policy(session, state)
    workloads = await clusters.workloads_of(session, [r.cluster.id for r in rows])
    return [cluster_out(r, workloads.get(r.cluster.id, []), policy, site.base_url) for r in rows]


async def _own(session: AsyncSession, caller: Caller, name: str) -> ClusterRow:
    """The caller's cluster called ``name``; anyone else's does not exist."""
    row = await clusters.cluster_by_name(session, caller.user_id, name)
    if row is None:
        raise NotFound(f"You have no Dask cluster called '{name}'; `allot dask list` shows yours.")
    return row


def _may(caller: Caller, what: str) -> None:
    if not caller.principal.has(Scope.SUBMIT):
        raise Forbidden(
            f"This token may read but not {what} (it lacks custom:allotment:submit); use a "
            "token that may submit, such as a session's."
        )


def _working(row: ClusterRow, what: str) -> None:
    """A cluster that is stopping or has ended is told nothing more."""
    state = ClusterState(row.cluster.state)
    if state not in clusters.WORKING:
        why = f" ({row.cluster.reason})" if row.cluster.reason else ""
        raise Conflict(
            f"Dask cluster '{row.cluster.name}' is {state.label}{why}: it cannot {what}. "
            "Start a new one."
        )


# --- create -----------------------------------------------------------------------------------


def _worker_profile(catalog: Catalog, name: str | None, account: str) -> ProfileEntry:
    if name is None:
        raise InvalidRequest(
            "Name the workers' `profile` (`allot profiles` lists them): this site sets no "
            "default for Dask workers (`dask.profile`)."
        )
    profile = catalog.profiles.get(name)
    if profile is None:
        raise NotFound(f"There is no profile '{name}'; `allot profiles` lists them.")
    if profile.accounts and not any(is_within(account, a) for a in profile.accounts):
        raise Forbidden(f"Profile '{profile.name}' is not offered to account '{account}'.")
    return profile


def _worker_size(profile: ProfileEntry, body: DaskClusterCreate) -> DaskWorkerSize:
    """Each worker's size: the profile's, adjusted within its options as a session's is."""
    try:
        memory = None if body.memory is None else parse_bytes(body.memory)
        size = choose_size(profile.offer, body.cpus, memory, body.gpus)
    except ValueError as e:
        raise InvalidRequest(sentence(str(e))) from None
    check_cpus(size.millicpus)
    check_memory(size.memory)
    problem = fits_some_node(size, profile.pool.nodes)
    if problem:
        raise InvalidRequest(sentence(problem.replace("this", "a worker this size", 1)))
    threads = body.threads if body.threads is not None else max(1, math.ceil(size.cpus))
    return DaskWorkerSize(cpus=size.cpus, memory=size.memory, gpus=size.gpu_count, threads=threads)


def _check_workers(workers: int, spec: DaskSpec) -> None:
    if workers > spec.max_workers:
        raise TooManyWorkers(
            f"A Dask cluster may have at most {spec.max_workers} workers here "
            f"(`dask.max_workers`); you asked for {workers}."
        )


def _bounds(adapt: DaskAdapt, spec: DaskSpec) -> tuple[int, int]:
    if adapt.minimum > adapt.maximum:
        raise InvalidRequest(
            f"`adapt` has a minimum ({adapt.minimum}) above its maximum ({adapt.maximum})."
        )
    _check_workers(adapt.maximum, spec)
    return adapt.minimum, adapt.maximum


def _python(path: str) -> str:
    if not os.path.isabs(path) or any(c in path for c in "\0\n\r"):
        raise InvalidRequest(
            f"`python` must be the absolute path of an interpreter, e.g. {'/usr/bin/python3'!r} "
            "(a notebook sends its own, `sys.executable`)."
        )
    return path


def _scheduler_profile(catalog: Catalog, spec: DaskSpec, account: str) -> ProfileEntry:
    """Where schedulers run: ``dask.scheduler_profile``, else the first profile on a local
    pool offered to the account."""
    if spec.scheduler_profile is not None:
        profile = catalog.profiles.get(spec.scheduler_profile)
        if profile is None:
            raise Conflict(
                f"This site's Dask schedulers run on profile '{spec.scheduler_profile}' "
                "(`dask.scheduler_profile`), which the policy no longer offers; tell your "
                "administrator."
            )
        return profile
    for profile in catalog.profiles.values():
        offered = not profile.accounts or any(is_within(account, a) for a in profile.accounts)
        if profile.pool.backend == "local" and offered:
            return profile
    raise Conflict(
        f"No profile on a local pool is offered to account '{account}', so a Dask scheduler "
        "has nowhere to run; ask your administrator to set `dask.scheduler_profile`."
    )


async def _own_session(session: AsyncSession, caller: Caller, workload_id: int) -> None:
    """``workload_id`` is a session of the caller's that has not ended."""
    w = await session.get(Workload, workload_id)
    if (
        w is None
        or w.user_id != caller.user_id
        or w.kind != "session"
        or WorkloadState(w.status) in TERMINAL
        or w.target != int(WorkloadState.RUNNING)
    ):
        raise NotFound(
            f"You have no running session {workload_id}: a cluster may belong only to a "
            "session of yours that runs (leave `session` out to make one of your own)."
        )


@router.post(
    "/dask/clusters",
    status_code=201,
    response_model=DaskClusterOut,
    responses={
        200: {"model": DaskClusterOut, "description": "An earlier request with this key made it."}
    },
)
async def create_cluster(
    body: DaskClusterCreate,
    caller: CallerDep,
    state: StateDep,
    site: SiteDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> DaskClusterOut:
    """A new Dask cluster: its scheduler waits in the queue like any workload (`starting`);
    its workers are asked for once it runs.

    Send an `Idempotency-Key` header to make retries safe: a repeated key returns the cluster
    the first request made (status 200, as it is now) instead of being told its name is taken.
    """
    _may(caller, "create Dask clusters")
    now = state.clock.now()
    catalog = await state.catalog()
    async with state.db.read() as session:
        policy = await _policy(session, state)
    spec = policy.dask
    try:
        name = check_cluster_name(body.name or f"dask-{secrets.token_hex(3)}")
    except ValueError as e:
        raise InvalidRequest(sentence(str(e))) from None
    account = charged_account(catalog, caller, body.account)
    profile = _worker_profile(catalog, body.profile or spec.profile, account.path)
    worker = _worker_size(profile, body)
    _check_workers(body.workers, spec)
    adapt = _bounds(body.adapt, spec) if body.adapt is not None else None
    workers = body.workers if adapt is None else clamp_workers(body.workers, *adapt)
    python = _python(body.python)
    home = _scheduler_profile(catalog, spec, account.path)
    size = Resources.of(spec.scheduler_cpus, spec.scheduler_memory)
    if fits_some_node(size, home.pool.nodes):
        raise Conflict(
            f"This site's Dask scheduler ({size.describe()}) fits no node of pool "
            f"'{home.pool.name}'; tell your administrator (`dask.scheduler_cpus`)."
        )
    made = new_cluster_secrets(now)
    async with state.db.write() as session:
        await clusters.lock_user(session, caller.user_id)
        if idempotency_key is not None:
            earlier = await clusters.cluster_made_with_key(session, caller.user_id, idempotency_key)
            if isinstance(earlier, ClusterRow):
                response.status_code = 200
                (out,) = await _answers(session, state, site, [earlier])
                return out
            if earlier is not None:
                raise Conflict(
                    f"This Idempotency-Key was used to submit workload {earlier}; send a new "
                    "key with each new cluster."
                )
        if body.session is not None:
            await _own_session(session, caller, body.session)
        live = await clusters.live_clusters(session, caller.user_id)
        if name in live:
            raise Conflict(
                f"You already have a Dask cluster called '{name}'; connect to it "
                f"(`AllotmentCluster.connect({name!r})`), stop it, or choose another name."
            )
        if len(live) >= spec.clusters_per_user:
            raise Conflict(
                f"You have {len(live)} Dask clusters running, the most this site allows "
                f"(`dask.clusters_per_user`); stop one first ({', '.join(sorted(live))})."
            )
        cluster = DaskCluster(
            name=name,
            user_id=caller.user_id,
            account_id=account.id,
            profile_id=profile.id,
            state=int(ClusterState.STARTING),
            reason="",
            worker=worker.model_dump(),
            python=python,
            versions=dict(body.versions),
            workers=workers,
            adapt_minimum=adapt[0] if adapt else None,
            adapt_maximum=adapt[1] if adapt else None,
            session_id=body.session,
            shutdown_on_close=body.shutdown_on_close,
            admin=caller.principal.is_admin,
            tls_cert=made.tls_cert,
            tls_key=made.tls_key,
            token_sha256=made.token_sha256,
            created_at=now,
            updated_at=now,
        )
        session.add(cluster)
        await session.flush()
        launch = scheduler_launch(
            cluster_id=cluster.id,
            name=name,
            python=python,
            service_url=spec.service_url or site.listen_url,
            token=made.token,
            tls_cert=made.tls_cert,
            tls_key=made.tls_key,
            dashboard_prefix=dashboard_path(site.base_url, cluster.id),
        )
        scheduler = NewWorkload(
            kind="dask-scheduler",
            name=f"{name}-scheduler",
            user_id=caller.user_id,
            account_id=account.id,
            pool_id=home.pool.id,
            profile_id=home.id,
            millicpus=size.millicpus,
            memory=size.memory,
            gpus={},
            command=launch.command,
            max_runtime=None,
            idempotency_key=idempotency_key,
            created_at=now,
            updated_at=now,
            env=launch.env,
        )
        values = {**scheduler.columns(), "cluster_id": cluster.id}
        scheduler_id = (
            await session.execute(insert(WORKLOADS).values(**values).returning(WORKLOADS.c.id))
        ).scalar_one()
        cluster.scheduler_id = int(scheduler_id)
        await session.flush()
        row = ClusterRow(cluster, caller.name, account.path, profile.name)
        (out,) = await _answers(session, state, site, [row])
    state.workloads_changed()
    return out


# --- read ---------------------------------------------------------------------------------


@router.get("/dask/clusters", response_model=list[DaskClusterOut])
async def list_clusters(
    caller: CallerDep,
    state: StateDep,
    site: SiteDep,
    ended: Annotated[bool, Query(description="Include clusters that have ended.")] = False,
    user: Annotated[
        str | None, Query(max_length=255, description="Another user's (administrators only).")
    ] = None,
) -> list[DaskClusterOut]:
    """Your Dask clusters, newest first: those that have not ended (`ended`: all of them)."""
    async with state.db.read() as session:
        user_id: int | None = caller.user_id
        if user is not None and user != caller.name:
            if not caller.principal.is_admin:
                raise Forbidden(
                    "Only administrators may list another user's Dask clusters; leave `user` "
                    "out to list yours."
                )
            found = await repo.user_by_name(session, user)
            user_id = found.id if found is not None else None
        if user_id is None:
            return []
        rows = await clusters.list_clusters(session, user_id, ended=ended, limit=LIST_LIMIT)
        return await _answers(session, state, site, rows)


@router.get("/dask/clusters/{name}", response_model=DaskClusterOut)
async def get_cluster(
    name: ClusterName, caller: CallerDep, state: StateDep, site: SiteDep
) -> DaskClusterOut:
    """Your cluster called `name` (the live one, else the newest of that name that ended)."""
    async with state.db.read() as session:
        row = await _own(session, caller, name)
        (out,) = await _answers(session, state, site, [row])
    return out


@router.get("/dask/clusters/{name}/credentials", response_model=DaskCredentials)
async def credentials(
    name: ClusterName, caller: CallerDep, state: StateDep, response: Response
) -> DaskCredentials:
    """The cluster's own TLS certificate and key: what a client connects with. Only its
    owner gets them, with a token that may submit (they run code as the owner)."""
    _may(caller, "connect to a Dask cluster")
    if caller.via_spawner:
        # The hub acts for users to start their sessions; it never needs to join their
        # clusters (as the dashboard proxy refuses it too).
        raise Forbidden("A cluster's credentials go to its owner's own tokens only.")
    async with state.db.read() as session:
        row = await _own(session, caller, name)
    c = row.cluster
    if ClusterState(c.state).ended:
        raise Conflict(f"Dask cluster '{name}' has ended ({c.reason or 'stopped'}).")
    response.headers["Cache-Control"] = "no-store"
    return DaskCredentials(address=c.address, tls_cert=c.tls_cert, tls_key=c.tls_key)


# --- change -------------------------------------------------------------------------------


async def _change(
    state: AppState,
    site: SiteDep,
    caller: Caller,
    name: str,
    what: str,
    workers: int | None = None,
    adapt: DaskAdapt | None = None,
) -> DaskClusterOut:
    """Scale (``workers``) or adapt (``adapt``) the caller's cluster."""
    _may(caller, what)
    now = state.clock.now()
    async with state.db.write() as session:
        policy = await _policy(session, state)
        row = await _own(session, caller, name)
        _working(row, what)
        c = row.cluster
        if adapt is not None:
            bounds = _bounds(adapt, policy.dask)
            target = clamp_workers(c.workers, *bounds)
            await clusters.set_workers(session, c.id, target, bounds, now)
        else:
            assert workers is not None
            _check_workers(workers, policy.dask)
            await clusters.set_workers(session, c.id, workers, None, now)
        await session.refresh(c)
        (out,) = await _answers(session, state, site, [row])
    state.workloads_changed()
    return out


@router.post("/dask/clusters/{name}/scale", response_model=DaskClusterOut)
async def scale(
    name: ClusterName, body: DaskScale, caller: CallerDep, state: StateDep, site: SiteDep
) -> DaskClusterOut:
    """Run this many workers (adaptive scaling ends)."""
    return await _change(state, site, caller, name, "scale", workers=body.workers)


@router.post("/dask/clusters/{name}/adapt", response_model=DaskClusterOut)
async def adapt(
    name: ClusterName, body: DaskAdapt, caller: CallerDep, state: StateDep, site: SiteDep
) -> DaskClusterOut:
    """Let the cluster's scheduler ask for workers as its load needs, within these bounds."""
    return await _change(state, site, caller, name, "adapt", adapt=body)


@router.post("/dask/clusters/{name}/stop", response_model=DaskClusterOut)
async def stop(
    name: ClusterName, caller: CallerDep, state: StateDep, site: SiteDep
) -> DaskClusterOut:
    """Stop the cluster: its workers, then its scheduler. Stopping one that is already
    stopping or has ended answers it as it is."""
    _may(caller, "stop a Dask cluster")
    now = state.clock.now()
    async with state.db.write() as session:
        row = await _own(session, caller, name)
        stopped = await clusters.request_stop(
            session, row.cluster.id, f"stopped by {caller.name}", now
        )
        await session.refresh(row.cluster)
        (out,) = await _answers(session, state, site, [row])
    if stopped:
        state.workloads_changed()
    return out


@router.post("/dask/clusters/{name}/heartbeat", response_model=DaskClusterOut)
async def heartbeat(
    name: ClusterName, caller: CallerDep, state: StateDep, site: SiteDep
) -> DaskClusterOut:
    """The client object that owns the cluster is alive (every 10 s): a cluster made with
    `shutdown_on_close` stops a grace after these stop. Answers the cluster as it is."""
    _may(caller, "keep a Dask cluster alive")
    now = state.clock.now()
    async with state.db.write() as session:
        row = await _own(session, caller, name)
        await clusters.record_client(session, row.cluster.id, now)
        await session.refresh(row.cluster)
        (out,) = await _answers(session, state, site, [row])
    return out


# --- the scheduler's report -----------------------------------------------------------------


def _cluster_token(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() not in ("token", "bearer") or not token.startswith(DASK_TOKEN_PREFIX):
        raise Unauthenticated(
            "A Dask scheduler reports with its cluster's token (`Authorization: token "
            f"{DASK_TOKEN_PREFIX}…`), which the service gave it in its environment."
        )
    return token


def _major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def version_mismatch(client: Mapping[str, str], scheduler: Mapping[str, str]) -> str | None:
    """What differs between the versions the client made the cluster with and those its
    scheduler runs (dask and distributed exactly, Python by major.minor); None: they match
    (or one side does not say)."""
    differ = []
    for package in ("dask", "distributed"):
        mine, theirs = client.get(package), scheduler.get(package)
        if mine and theirs and mine != theirs:
            differ.append(f"{package} {mine} in the client but {theirs} in the scheduler")
    mine, theirs = client.get("python"), scheduler.get("python")
    if mine and theirs and _major_minor(mine) != _major_minor(theirs):
        differ.append(f"Python {mine} in the client but {theirs} in the scheduler")
    if not differ:
        return None
    return (
        "version mismatch: "
        + "; ".join(differ)
        + ". Make the cluster from the environment its `python` runs, or install the same "
        "versions there."
    )


def _check_addresses(body: DaskSchedulerReport) -> None:
    """A scheduler listens over TLS only; anything else would let any user on the machine in."""
    if not body.address.startswith("tls://"):
        raise InvalidRequest(f"A cluster's scheduler listens on tls:// only, not {body.address!r}.")
    if body.dashboard is not None and not body.dashboard.startswith("https://"):
        raise InvalidRequest(
            f"A cluster's dashboard is served over https:// only, not {body.dashboard!r}."
        )
    # The service's proxy connects to the dashboard: only on the scheduler's own host, never
    # wherever a report points it (the service would knock on other machines' doors).
    comm, board = urlsplit(body.address.replace("tls://", "https://", 1)), None
    if body.dashboard is not None:
        board = urlsplit(body.dashboard)
    try:
        valid = comm.hostname is not None and comm.port is not None
        same = board is None or (board.hostname == comm.hostname and board.port is not None)
    except ValueError:
        valid = same = False
    if not valid:
        raise InvalidRequest(f"A scheduler's address is tls://host:port, not {body.address!r}.")
    if not same:
        raise InvalidRequest(
            "A cluster's dashboard is served on its scheduler's own host "
            f"({comm.hostname}), at https://host:port; not {body.dashboard!r}."
        )


@router.post("/dask/report", response_model=DaskSchedulerOrders)
async def scheduler_report(
    body: DaskSchedulerReport, request: Request, state: StateDep
) -> DaskSchedulerOrders:
    """A cluster's scheduler reports (every few seconds) where it listens, how busy it is and
    how many workers it would run; authenticated by its cluster's token, not by the hub."""
    token = _cluster_token(request)
    _check_addresses(body)
    now = state.clock.now()
    async with state.db.write() as session:
        c = await clusters.cluster_by_token(session, token_sha256(token))
        if c is None:
            raise Unauthenticated("This is not the token of any Dask cluster.")
        before = ClusterState(c.state)
        if before.ended:
            raise NotFound(f"Dask cluster '{c.name}' has ended: its scheduler should stop too.")
        mismatch = version_mismatch(c.versions or {}, body.versions)
        if mismatch is not None:
            changed = await clusters.request_stop(session, c.id, f"failed: {mismatch}", now)
        else:
            spec = (await _policy(session, state)).dask
            idle = body.clients == 0 and body.tasks == 0
            idle_since = (c.idle_since or now) if idle else None
            workers = None
            if c.adapt_maximum is not None:
                workers = clamp_workers(
                    body.adaptive_target,
                    c.adapt_minimum or 0,
                    min(c.adapt_maximum, spec.max_workers),
                )
            changed = before == ClusterState.STARTING and await clusters.to_running(
                session, c.id, now
            )
            await clusters.record_report(
                session,
                c.id,
                address=body.address,
                dashboard=body.dashboard,
                idle_since=idle_since,
                idle_workers=idle_worker_ids(body.idle_workers, spec.max_workers),
                workers=workers,
                now=now,
            )
            changed = changed or (workers is not None and workers != c.workers)
    if changed:
        state.workloads_changed()
    return DaskSchedulerOrders(report_every=REPORT_EVERY)
