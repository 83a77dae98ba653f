"""Workloads: create (one, or a job array), get, list, cancel; the controller runs them."""

from __future__ import annotations

import os
import re
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Header, Path, Query, Response
from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from allotment.api.bounds import check_command, check_cpus, check_memory, check_runtime
from allotment.api.deps import AppState, Caller, CallerDep, StateDep
from allotment.api.pending import Reservation
from allotment.api.views import workload_out
from allotment.backends.local.output import read_as
from allotment.backends.local.process import under_private
from allotment.db import repository as repo
from allotment.db.catalog import AccountEntry, Catalog, PoolEntry, ProfileEntry
from allotment.db.tables import WORKLOADS
from allotment.domain.accounts import is_within
from allotment.domain.permissions import Scope
from allotment.domain.profiles import ProfileOffer, choose_size, fits_some_node
from allotment.domain.quantities import parse_bytes, parse_duration
from allotment.domain.resources import Resources
from allotment.domain.workloads import WorkloadState, can_cancel, parse_array
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


def charged_account(catalog: Catalog, caller: Caller, ref: str | None) -> AccountEntry:
    """The account a new workload charges: the one named, else the user's default or only."""
    p = caller.principal
    if ref is None:
        ref = caller.default_account
    if ref is None:
        spendable = p.spendable_accounts()
        if len(spendable) != 1:
            raise InvalidRequest(
                f"Say which account to charge (`account`); you may charge: {', '.join(spendable)}."
                if spendable
                else "You are not a member of any account, so you cannot start workloads yet. "
                "Ask a manager of your lab to add you."
            )
        ref = spendable[0]
    account = catalog.account(ref)
    if account is None or not p.can_see_account(account.path):
        raise NotFound(f"There is no account '{ref}' that you can see.")
    if not p.can_submit_to(account.path):
        mine = ", ".join(sorted({m.account for m in p.memberships if m.role != "viewer"}))
        raise Forbidden(
            f"You may not charge account '{account.path}'. "
            + (f"You may charge: {mine}." if mine else "Ask its manager to add you as a member.")
        )
    if account.archived:
        raise Conflict(f"Account '{account.path}' is archived; charge another account.")
    return account


def _size(offer: ProfileOffer | None, body: WorkloadCreate) -> Resources:
    try:
        memory = None if body.memory is None else parse_bytes(body.memory)
        gpus_n = body.gpus if isinstance(body.gpus, int) else None
        if offer is not None:
            if isinstance(body.gpus, dict):
                raise ValueError("with a profile, give `gpus` as a count")
            return choose_size(offer, body.cpus, memory, gpus_n)
        if body.cpus is None or memory is None:
            raise ValueError("without a profile, give both `cpus` and `memory`")
        if gpus_n:
            raise ValueError('without a profile, give `gpus` by model, e.g. {"a100": 1}')
        return Resources.of(body.cpus, memory, body.gpus if isinstance(body.gpus, dict) else {})
    except ValueError as e:
        raise InvalidRequest(_sentence(str(e))) from None


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _placement(
    catalog: Catalog, body: WorkloadCreate, account: AccountEntry
) -> tuple[PoolEntry, ProfileEntry | None, int | None]:
    """The pool and profile a request names, and the profile's longest run."""
    if body.profile is not None:
        profile = catalog.profiles.get(body.profile)
        if profile is None:
            raise NotFound(f"There is no profile '{body.profile}'; `allot profiles` lists them.")
        if profile.accounts and not any(is_within(account.path, a) for a in profile.accounts):
            raise Forbidden(f"Profile '{profile.name}' is not offered to account '{account.path}'.")
        return profile.pool, profile, profile.spec.max_runtime
    if body.pool is not None:
        pool = catalog.pools.get(body.pool)
        if pool is None:
            raise NotFound(f"There is no pool '{body.pool}'; `allot pools` lists them.")
        return pool, None, None
    raise InvalidRequest("Name a `profile` (see `allot profiles`) or a `pool` and a size.")


def _max_runtime(body: WorkloadCreate, allowed: int | None) -> int | None:
    if body.max_runtime is None:
        return allowed
    try:
        asked = parse_duration(body.max_runtime)
    except ValueError as e:
        raise InvalidRequest(_sentence(str(e))) from None
    check_runtime(asked)
    if allowed is not None and asked > allowed:
        raise InvalidRequest(
            f"Profile '{body.profile}' allows at most {allowed} s; you asked {asked} s."
        )
    return asked


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
#: Names a shell refuses to take from the environment (dash: OPTIND must be a number; bash,
#: where /bin/sh is bash: read-only variables): the job would end before its command ran.
_SHELL_OWNED = frozenset(
    {"OPTIND", "PPID", "UID", "EUID", "SHELLOPTS", "BASHOPTS", "BASH_VERSINFO", "BASH_ARGV0"}
)


def _job_fields(body: WorkloadCreate, pool: PoolEntry) -> dict[str, Any]:
    """What a batch job adds to a workload: environment, directory, output files."""
    if body.kind == "job" and not body.command:
        raise InvalidRequest(
            'A job needs a `command`: the program and its arguments, e.g. ["python", "train.py"].'
        )
    check_command(body)
    for name in body.env:
        if not _ENV_NAME.match(name):
            raise InvalidRequest(
                f"`env` has {name!r}, which is not a variable name (letters, digits and _, "
                "not starting with a digit)."
            )
        if name in _SHELL_OWNED:
            raise InvalidRequest(
                f"`env` has {name}, which the shell that starts the job keeps for itself; "
                "choose another name."
            )
    if body.workdir is not None and not body.workdir.startswith("/"):
        raise InvalidRequest(
            f"`workdir` must be an absolute path (got {body.workdir!r}), e.g. /home/alice/project."
        )
    if pool.backend == "local" and os.geteuid() == 0:
        # As root, every workload of a local pool has a private /tmp and /dev/shm: a job can
        # neither start in nor write output to the machine's.
        for field_name in ("workdir", "stdout", "stderr"):
            private = under_private(path := getattr(body, field_name) or "")
            if private is not None:
                raise InvalidRequest(
                    f"`{field_name}` is {path}, under {private}: every job has a private "
                    f"{private} of its own, gone when it ends, so nothing there can be found "
                    "again. Use your home or a project directory."
                )
    return {
        "env": dict(body.env) or None,
        "workdir": body.workdir,
        "stdout": body.stdout,
        "stderr": body.stderr,
    }


def _check_kind(caller: Caller, kind: Kind) -> None:
    """Users submit jobs; each other kind comes with a command the service or hub builds."""
    if kind == "session" and not caller.via_spawner:
        raise Forbidden(
            "Sessions are started from JupyterHub, whose spawner builds their command: start "
            "one from the hub's home page. Submit batch work as a `job`."
        )
    if kind in ("dask-scheduler", "dask-worker"):
        raise InvalidRequest(
            f"A {kind} is not submitted through `POST workloads`: Dask clusters get an endpoint "
            "of their own that builds their commands. Submit batch work as a `job`."
        )


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
                    return workload_out(earlier)
            table = WORKLOADS
            first = (
                await session.execute(
                    insert(table).values(**values, array_index=indices[0]).returning(table.c.id)
                )
            ).scalar_one()
            await session.execute(update(table).where(table.c.id == first).values(array_id=first))
            rest = [
                {**values, "idempotency_key": None, "array_id": first, "array_index": i}
                for i in indices[1:]
            ]
            if rest:
                await session.execute(insert(table), rest)
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
        return workload_out(earlier)
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
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1,
            max_length=128,
            pattern=r"^[!-~]+$",
            description="1-128 visible ASCII characters, e.g. a UUID.",
        ),
    ] = None,
) -> WorkloadOut | Response:
    """Record a new workload; it waits as `pending` until the scheduler admits it.

    Send an `Idempotency-Key` header to make retries safe: a repeated key returns the
    workload the first request created (status 200) instead of a new one.
    """
    if not caller.principal.has(Scope.SUBMIT):
        raise Forbidden("This token may read but not submit (it lacks custom:allotment:submit).")
    _check_kind(caller, body.kind)
    catalog = await state.catalog()
    account = charged_account(catalog, caller, body.account)
    pool, profile, allowed = _placement(catalog, body, account)
    size = _size(profile.offer if profile else None, body)
    check_cpus(size.millicpus)
    check_memory(size.memory)
    problem = fits_some_node(size, pool.nodes)
    if problem:
        raise InvalidRequest(_sentence(problem))
    now = state.clock.now()
    reason = "waiting for the scheduler"
    max_runtime = _max_runtime(body, allowed)
    extra = _job_fields(body, pool)
    indices = None
    if body.array is not None:
        try:
            indices = parse_array(body.array)
        except ValueError as e:
            raise InvalidRequest(_sentence(str(e))) from None
    if body.after is not None:
        async with state.db.read() as session:
            await visible_workload(session, caller, body.after)
        extra["after_id"] = body.after
    values: dict[str, Any] = {
        "kind": body.kind,
        "name": body.name,
        "user_id": caller.user_id,
        "account_id": account.id,
        "pool_id": pool.id,
        "profile_id": profile.id if profile else None,
        "millicpus": size.millicpus,
        "memory": size.memory,
        "gpus": dict(size.gpus),
        "target": int(WorkloadState.RUNNING),
        "status": int(WorkloadState.PENDING),
        "reason": reason,
        "command": body.command,
        "max_runtime": max_runtime,
        "idempotency_key": idempotency_key,
        "created_at": now,
        "updated_at": now,
        **extra,
    }
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
        return workload_out(earlier)
    out = WorkloadOut.model_construct(
        id=workload_id,
        kind=body.kind,
        name=body.name,
        user=caller.name,
        account=account.path,
        pool=pool.name,
        profile=profile.name if profile else None,
        cpus=size.cpus,
        memory=size.memory,
        gpus=dict(size.gpus),
        status="pending",
        target="running",
        reason=reason,
        command=body.command,
        max_runtime=max_runtime,
        created_at=now,
        updated_at=now,
        workdir=values.get("workdir"),
        stdout=values.get("stdout"),
        stderr=values.get("stderr"),
        after=values.get("after_id"),
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
        raise InvalidRequest(_sentence(str(e))) from None
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
        status, target = WorkloadState(w.status), WorkloadState(w.target)
        if not can_cancel(status, target):
            raise Conflict(
                f"Workload {workload_id} is already {target.label if target >= WorkloadState.STOPPING else status.label}."
            )
        w.target = WorkloadState.STOPPED
        if status == WorkloadState.PENDING:
            w.status = WorkloadState.STOPPED
        w.reason = f"cancelled by {caller.name}"
        w.updated_at = now
        if status == WorkloadState.PENDING:
            w.ended_at = now
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
    if row.user != caller.name and not caller.principal.is_admin:
        raise Forbidden(
            f"Only {row.user} (and administrators) may read workload {workload_id}'s output."
        )
    placement = row.workload.placement or {}
    path = placement.get(stream)
    if path is None:
        raise NotFound(
            f"Workload {workload_id} has no {stream} yet: it is {WorkloadState(row.workload.status).label}."
        )
    data = await read_as(int(placement["uid"]), int(placement["gid"]), path, offset, limit)
    if data is None:
        raise NotFound(f"{path} cannot be read (removed, or not readable by {placement['user']}).")
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
