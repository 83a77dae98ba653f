"""Workloads: create (one, or a job array), get, list, cancel; the controller runs them."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Path, Query, Response
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from allotment.api.deps import AppState, Caller, CallerDep, IdempotencyKey, StateDep
from allotment.api.pending import Reservation
from allotment.api.views import workload_out, workload_out_of
from allotment.backends.registry import private_path
from allotment.db import repository as repo
from allotment.db import workloads as transitions
from allotment.db.tables import WORKLOADS, Pool
from allotment.domain.permissions import Scope
from allotment.domain.submission import PoolRef, sentence, submission
from allotment.domain.workloads import DASK_KINDS, WorkloadState, can_cancel
from allotment.errors import Conflict, Forbidden, InvalidRequest, NotFound
from allotment.schemas import MAX_ID, Kind, Page, WorkloadCreate, WorkloadOut

__all__ = ["WorkloadId", "aware", "router"]

router = APIRouter(tags=["workloads"])

WorkloadId = Annotated[int, Path(ge=1, le=MAX_ID, description="The workload's id.")]


def aware(at: datetime, name: str) -> datetime:
    """``at`` in UTC; a time without a zone, or one that UTC cannot hold, is refused."""
    if at.tzinfo is None:
        raise InvalidRequest(f"`{name}` needs a time zone, e.g. 2026-11-22T09:00:00Z.")
    try:
        return at.astimezone(UTC)
    except OverflowError:
        raise InvalidRequest(f"`{name}` is outside the years 1 to 9999 in UTC.") from None


def _private_dir(pool: PoolRef, path: str) -> str | None:
    """A directory each workload of the pool has privately (the local backend's /tmp and
    /dev/shm, as root): a job can neither start in nor write output to the machine's."""
    return private_path(pool.backend, path)


def _pending_reservation(
    state: AppState, caller: Caller, adding: int, cap: int
) -> AbstractAsyncContextManager[Reservation]:
    """A user may have at most ``limits.pending_per_user`` workloads waiting; each task of an
    array counts (``api/pending.py`` holds it under concurrency)."""

    async def count() -> int:
        t = WORKLOADS
        waiting = (
            select(t.c.id)
            .where(t.c.user_id == caller.user_id, t.c.status == int(WorkloadState.PENDING))
            .limit(cap)
            .subquery()
        )
        async with state.db.read() as session:
            return int(
                (await session.execute(select(func.count()).select_from(waiting))).scalar_one()
            )

    return state.pending.reserve(caller.user_id, adding, cap, count)


def _replayed(earlier: repo.WorkloadRow) -> WorkloadOut:
    """The answer to a repeated Idempotency-Key: the workload it made. A key that made a Dask
    cluster (whose scheduler is a workload too) made nothing of this endpoint's: a conflict,
    as ``POST dask/clusters`` answers a key that submitted a workload."""
    if earlier.workload.kind in DASK_KINDS:
        raise Conflict(
            "This Idempotency-Key was used to create a Dask cluster (its scheduler is workload "
            f"{earlier.workload.id}); send a new key with each new submission."
        )
    return workload_out(earlier)


async def _create_array(
    state: AppState, caller: Caller, indices: list[int], values: dict[str, Any], response: Response
) -> WorkloadOut:
    """One workload per index, in one transaction; the first one's id names the array."""
    key = values.get("idempotency_key")
    try:
        async with state.db.write() as session:
            if key is not None:
                earlier = await repo.workload_by_key(session, caller.user_id, key)
                if earlier is not None:
                    response.status_code = 200
                    return _replayed(earlier)
            first = await session.run_sync(
                lambda s: transitions.insert_pending(s.connection(), values, indices)
            )
            row = await repo.workload_by_id(session, first)
    except IntegrityError:
        # A concurrent replay of the same key committed first (PostgreSQL lets both look).
        if key is None:
            raise
        async with state.db.read() as session:
            earlier = await repo.workload_by_key(session, caller.user_id, key)
        if earlier is None:
            raise
        response.status_code = 200
        return _replayed(earlier)
    state.workloads_changed()
    assert row is not None
    return workload_out(row)


@router.post(
    "/workloads",
    status_code=201,
    response_model=WorkloadOut,
    responses={
        200: {"model": WorkloadOut, "description": "An earlier request with this key made it."}
    },
)
async def create_workload(
    body: WorkloadCreate,
    caller: CallerDep,
    state: StateDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> WorkloadOut | Response:
    """Record a new workload; it waits as `pending` until the scheduler admits it.

    Send an `Idempotency-Key` header to make retries safe: a repeated key returns the
    workload the first request created (status 200) instead of a new one.
    """
    if not caller.principal.has(Scope.SUBMIT):
        raise Forbidden("This token may read but not submit (it lacks custom:allotment:submit).")
    catalog = await state.catalog()
    sub = submission(body, caller, catalog, state.clock.now(), idempotency_key, _private_dir)
    if body.after is not None:
        async with state.db.read() as session:
            await visible_workload(session, caller, body.after)
    new, indices = sub.workload, sub.indices
    values = new.columns()
    adding = len(indices) if indices else 1
    async with _pending_reservation(state, caller, adding, await state.pending_cap()) as reserved:
        if indices is not None:
            array = await _create_array(state, caller, indices, values, response)
            if response.status_code == 200:  # a replay: nothing was added
                reserved.give_back()
            return array
        workload_id, created = await state.inserts.insert(values)
        if not created:
            reserved.give_back()
    state.workloads_changed()
    if not created:
        response.status_code = 200
        async with state.db.read() as session:
            earlier = await repo.workload_by_id(session, workload_id)
        assert earlier is not None
        return _replayed(earlier)
    out = workload_out_of(
        new,
        workload_id,
        caller.name,
        sub.account.path,
        sub.pool.name,
        sub.profile.name if sub.profile else None,
    )
    # Serialised here, once: the hot path of submission skips FastAPI's re-validation.
    return Response(out.model_dump_json(), status_code=201, media_type="application/json")


@router.get("/workloads", response_model=Page[WorkloadOut])
async def list_workloads(
    caller: CallerDep,
    state: StateDep,
    status: Annotated[list[str] | None, Query(description="Repeat for several states.")] = None,
    account: Annotated[
        str | None, Query(description="Account path or name; includes its subtree.")
    ] = None,
    user: Annotated[str | None, Query()] = None,
    kind: Annotated[Kind | None, Query()] = None,
    array: Annotated[
        int | None, Query(ge=1, le=MAX_ID, description="Only the tasks of this job array.")
    ] = None,
    since: Annotated[datetime | None, Query(description="Created at or after (ISO 8601).")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: Annotated[
        str | None, Query(description="From the previous page's `next_cursor`.")
    ] = None,
    page: Annotated[
        int, Query(ge=1, le=1_000_000, description="Page number, when not using `cursor`.")
    ] = 1,
) -> Page[WorkloadOut]:
    """Workloads you may see, newest first."""
    p = caller.principal
    try:
        statuses = tuple(WorkloadState.parse(s) for s in status or ())
    except ValueError as e:
        raise InvalidRequest(sentence(str(e))) from None
    if since is not None:
        since = aware(since, "since")
    before_id = None
    if cursor is not None:
        if not (cursor.isascii() and cursor.isdigit() and int(cursor) <= MAX_ID):
            raise InvalidRequest("`cursor` is not one this API gave out; start from page 1.")
        before_id = int(cursor)
    async with state.db.read() as session:
        account_ids = None
        if account is not None:
            row = await repo.account_by_ref(session, account)
            if row is None or not p.can_see_account(row.path):
                raise NotFound(f"There is no account '{account}' that you can see.")
            account_ids = tuple(await repo.accounts_within(session, [row.path]))
        user_id = None
        if user is not None:
            u = await repo.user_by_name(session, user)
            user_id = u.id if u else -1
        if p.is_admin:
            visible = repo.Visibility(everything=True)
        else:
            roots = p.oversight_roots()
            ids = tuple(await repo.accounts_within(session, roots)) if roots else ()
            visible = repo.Visibility(False, caller.user_id, ids)
        rows, more = await repo.list_workloads(
            session,
            repo.WorkloadFilter(statuses, account_ids, user_id, since, kind, array),
            visible,
            limit=limit,
            before_id=before_id,
            offset=0 if cursor else (page - 1) * limit,
        )
    items = [workload_out(r) for r in rows]
    return Page[WorkloadOut](items=items, next_cursor=str(items[-1].id) if more and items else None)


async def visible_workload(
    session: AsyncSession, caller: Caller, workload_id: int
) -> repo.WorkloadRow:
    row = await repo.workload_by_id(session, workload_id)
    if row is None or not caller.principal.can_read_workload(row.user, row.account):
        raise NotFound(f"There is no workload {workload_id} that you can see.")
    return row


@router.get("/workloads/{workload_id}", response_model=WorkloadOut)
async def get_workload(workload_id: WorkloadId, caller: CallerDep, state: StateDep) -> WorkloadOut:
    async with state.db.read() as session:
        return workload_out(await visible_workload(session, caller, workload_id))


@router.post("/workloads/{workload_id}/cancel", response_model=WorkloadOut)
async def cancel_workload(
    workload_id: WorkloadId, caller: CallerDep, state: StateDep
) -> WorkloadOut:
    """Ask for a workload to stop. A pending one stops at once; a running one is told to."""
    now = state.clock.now()
    async with state.db.write() as session:
        row = await visible_workload(session, caller, workload_id)
        if not caller.principal.can_cancel_workload(row.user, row.account):
            if row.user == caller.name:  # their own: it is the token that may not
                raise Forbidden(
                    f"This token may read but not cancel workload {workload_id} (it lacks "
                    "custom:allotment:submit); use a token that may submit."
                )
            raise Forbidden(
                f"You may see workload {workload_id} but not cancel it; "
                f"its owner ({row.user}) or a manager of {row.account} can."
            )
        w = row.workload
        if can_cancel(WorkloadState(w.status), WorkloadState(w.target)):
            reason = f"cancelled by {caller.name}"
            stopped = await session.run_sync(
                lambda s: transitions.request_stop(s.connection(), workload_id, reason, now)
            )
            await session.refresh(w)  # as written, or as it moved meanwhile
        else:
            stopped = False
        if not stopped:
            status, target = WorkloadState(w.status), WorkloadState(w.target)
            raise Conflict(
                f"Workload {workload_id} is already {target.label if target >= WorkloadState.STOPPING else status.label}."
            )
    state.workloads_changed(workload_id)
    return workload_out(row)


@router.get(
    "/workloads/{workload_id}/output",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
async def workload_output(
    workload_id: WorkloadId,
    caller: CallerDep,
    state: StateDep,
    stream: Annotated[Literal["stdout", "stderr"], Query()] = "stdout",
    offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=16 * 2**20)] = 2**20,
) -> Response:
    """A batch job's output from byte ``offset``; ``X-Next-Offset`` says where to continue.

    Only the workload's owner and administrators may read it: output can hold private data,
    so managers of the account see the job but not what it printed.
    """
    async with state.db.read() as session:
        row = await visible_workload(session, caller, workload_id)
        kind = await session.scalar(select(Pool.backend).where(Pool.id == row.workload.pool_id))
    if row.user != caller.name and not caller.principal.is_admin:
        raise Forbidden(
            f"Only {row.user} (and administrators) may read workload {workload_id}'s output."
        )
    placement = row.workload.placement or {}
    backend = await state.backend(kind) if kind is not None else None
    output = (
        await backend.read_output(workload_id, placement, stream, offset, limit)
        if backend is not None
        else None
    )
    if output is None:
        raise NotFound(
            f"Workload {workload_id} has no {stream} yet: it is {WorkloadState(row.workload.status).label}."
        )
    path, data = output.path, output.data
    if data is None:
        # The account it ran as, where the backend records one (the local backend does).
        user = placement.get("user", row.user)
        raise NotFound(f"{path} cannot be read (removed, or not readable by {user}).")
    ended = row.workload.status in (WorkloadState.STOPPED, WorkloadState.FAILED)
    return Response(
        data,
        media_type="application/octet-stream",
        headers={
            "X-Next-Offset": str(offset + len(data)),
            "X-Workload-Ended": "true" if ended else "false",
            # Percent-encoded: a header carries Latin-1 only, a path may hold any character.
            "X-Output-Path": quote(path, safe="/"),
        },
    )
