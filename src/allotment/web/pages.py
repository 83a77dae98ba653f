"""The Me, Waste and Admin pages (the Account page and its forms are in ``account.py`` and
``forms.py``)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from allotment.controller.view import usage
from allotment.db.tables import Account, DaskCluster, Membership, User, Workload
from allotment.domain.dask import ClusterState, dashboard_path
from allotment.domain.workloads import WorkloadState
from allotment.scheduler.fairshare import fair_share_factors, level_fs
from allotment.web import reads
from allotment.web.access import can_view_account
from allotment.web.charts import utilisation_chart
from allotment.web.context import Page, error_page, open_page
from allotment.web.display import waste_of
from allotment.web.paging import PAGE, cursor, page_number, slice_of
from allotment.web.periods import local_today

__all__ = ["router"]

router = APIRouter(include_in_schema=False)

#: Windows the pages offer, in days.
WINDOWS = (7, 30, 90, 365)


def window(request: Request, default: int = 30) -> int:
    raw = request.query_params.get("days", "")
    return int(raw) if raw.isdigit() and int(raw) in WINDOWS else default


@dataclass(frozen=True)
class ClusterLine:
    """One of the caller's Dask clusters on the Me page."""

    name: str
    account: str
    state: ClusterState
    reason: str
    #: Workers asked for, and running now.
    workers: int
    running: int
    created_at: datetime
    ended_at: datetime | None
    #: Through the service's proxy (only the owner may open it); None while it has none.
    dashboard: str | None


#: Ended clusters stay on the Me page this long (then only the API's ``?ended=true`` lists them).
ENDED_SHOWN = timedelta(days=1)


async def dask_clusters(
    session: AsyncSession, user_id: int, base: str, now: datetime
) -> list[ClusterLine]:
    """The caller's clusters that run, and those that ended in the last day, newest first."""
    running = (
        select(func.count())
        .where(
            Workload.cluster_id == DaskCluster.id,
            Workload.kind == "dask-worker",
            Workload.status == int(WorkloadState.RUNNING),
        )
        .scalar_subquery()
    )
    rows = (
        await session.execute(
            select(DaskCluster, Account.path, running)
            .join(Account, Account.id == DaskCluster.account_id)
            .where(
                DaskCluster.user_id == user_id,
                or_(DaskCluster.ended_at.is_(None), DaskCluster.ended_at > now - ENDED_SHOWN),
            )
            .order_by(DaskCluster.id.desc())
            .limit(50)
        )
    ).all()
    lines = []
    for c, account, workers_running in rows:
        state = ClusterState(c.state)
        live = c.dashboard is not None and not state.ended
        lines.append(
            ClusterLine(
                name=c.name,
                account=account,
                state=state,
                reason=c.reason,
                workers=c.workers,
                running=int(workers_running),
                created_at=c.created_at,
                ended_at=c.ended_at,
                dashboard=dashboard_path(base, c.id) + "/status" if live else None,
            )
        )
    return lines


@router.get("/")
async def me(request: Request) -> Response:
    page = await open_page(request)
    if not isinstance(page, Page):
        return page
    caller = page.caller
    today = local_today(page.state.clock.now(), page.tz)
    async with page.state.db.read() as session:
        rows = await reads.workloads_page(
            session, user_id=caller.user_id, before=cursor(request.query_params.get("before"))
        )
        more = len(rows) > PAGE
        rows = rows[:PAGE]
        costs = await reads.costs_of(session, [r.id for r in rows])
        month = await reads.spending_by_account(session, caller.user_id, today.replace(day=1))
        year = await reads.spending_by_account(session, caller.user_id, today - timedelta(days=364))
        paths = dict(
            (
                await session.execute(
                    select(Account.id, Account.path).where(Account.id.in_(set(month) | set(year)))
                )
            ).all()
        )
        clusters = await dask_clusters(
            session, caller.user_id, page.board.base, page.state.clock.now()
        )
    spending = sorted(
        ((paths.get(a, "?"), month.get(a, 0), year.get(a, 0)) for a in set(month) | set(year)),
        key=lambda s: s[0],
    )
    accounts = sorted(
        {
            m.account
            for m in caller.principal.memberships
            if can_view_account(caller.principal, m.account)
        }
    )
    return page.render(
        "me.html",
        workloads=rows,
        costs=costs,
        next_before=rows[-1].id if more and rows else None,
        spending=slice_of(spending, page_number(request.query_params.get("spage"))),
        accounts=accounts,
        month=today.strftime("%B %Y"),
        clusters=clusters,
    )


@router.get("/waste")
async def waste(request: Request) -> Response:
    page = await open_page(request)
    if not isinstance(page, Page):
        return page
    days = window(request)
    principal = page.caller.principal
    since = page.state.clock.now() - timedelta(days=days)
    async with page.state.db.read() as session:
        if principal.is_admin:
            scope: dict[str, object] = {"user_id": None, "account_ids": None}
        else:
            tree = await reads.accounts(session)
            ids: set[int] = set()
            for root in principal.oversight_roots():
                ids.update(reads.subtree_ids(tree, root))
            scope = {"user_id": page.caller.user_id, "account_ids": ids}
        used = await reads.measured_use(session, since, **scope)  # type: ignore[arg-type]
    flagged = []
    by_account: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    by_user: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for u in used:
        seconds = (u.end - u.start).total_seconds()
        w = waste_of(
            millicpus=u.millicpus,
            memory=u.memory,
            gpus=u.gpus,
            seconds=seconds,
            used_cpu_seconds=u.used_cpu_seconds,
            peak_memory=u.peak_memory,
            gpu_utilisation=u.gpu_utilisation,
        )
        if w.words:
            flagged.append((u, w))
            for key, table in ((u.account, by_account), (u.user, by_user)):
                table[key][0] += 1
                table[key][1] += u.amount
    flagged.sort(key=lambda f: (-f[0].amount, f[0].workload_id))
    q = request.query_params
    return page.render(
        "waste.html",
        days=days,
        windows=WINDOWS,
        flagged=slice_of(flagged, page_number(q.get("page"))),
        by_account=slice_of(
            sorted(by_account.items(), key=lambda i: -i[1][1]), page_number(q.get("apage"))
        ),
        by_user=slice_of(
            sorted(by_user.items(), key=lambda i: -i[1][1]), page_number(q.get("upage"))
        ),
        measured=len(used),
    )


@router.get("/admin")
async def admin(request: Request) -> Response:
    page = await open_page(request)
    if not isinstance(page, Page):
        return page
    if not page.caller.principal.is_admin:
        return error_page(
            page.board,
            403,
            "Administrators only",
            "The Admin page shows every account's queue and usage; it needs "
            "custom:allotment:admin. Your own and your accounts' pages are linked above.",
        )
    q = request.query_params
    days = window(request)
    now = page.state.clock.now()
    today = local_today(now, page.tz)
    first = today - timedelta(days=days - 1)
    view = page.view
    capacity: dict[str, tuple[float, float, int]] = {}
    for n in view.nodes if view else []:
        c, m, g = capacity.get(n.pool, (0.0, 0.0, 0))
        capacity[n.pool] = (
            c + n.capacity.cpus,
            m + n.capacity.memory / 2**30,
            g + n.capacity.gpu_count,
        )
    qpage = page_number(q.get("qpage"))
    async with page.state.db.read() as session:
        pool_rows = await reads.pool_use_by_day(session, first, today)
        queue = await reads.workloads_page(session, waiting=True, offset=(qpage - 1) * PAGE)
        audit = await reads.audit_page(session, before=cursor(q.get("abefore")))
        fair = await session.run_sync(lambda s: usage(s, view, now) if view else {})
        members = await session.run_sync(_members)
        accounts = await reads.accounts(session)
    # Shares from the accounts table: it holds the sub-accounts managers created and the shares
    # they set, beside the policy's.
    tree = _fair_share_rows({a.path: float(a.shares) for a in accounts}, fair, members)
    return page.render(
        "admin.html",
        days=days,
        windows=WINDOWS,
        utilisation=utilisation_chart(pool_rows, capacity, first, today),
        queue=queue[:PAGE],
        qpage=qpage,
        queue_more=len(queue) > PAGE,
        audit=audit[:PAGE],
        audit_next=audit[PAGE - 1].id if len(audit) > PAGE else None,
        tree=slice_of(tree, page_number(q.get("fpage")), 50),
        generated=datetime.now(UTC),
    )


def _members(session: Session) -> list[tuple[str, str]]:
    """(account, user) of every member and manager: the fair-share tree's leaves."""
    rows = session.execute(
        select(Account.path, User.name)
        .join(Membership, Membership.account_id == Account.id)
        .join(User, User.id == Membership.user_id)
        .where(
            Membership.role != "viewer",
            Account.archived_at.is_(None),
            User.name != "*",  # the policy's "every hub user": no user of its own
        )
    )
    return [(a, u) for a, u in rows]


def _fair_share_rows(
    shares: Mapping[str, float],
    fair: dict[tuple[str, str], float],
    members: list[tuple[str, str]],
) -> list[dict[str, object]]:
    """Like ``sshare``: each account (then its users) with shares, normalised shares, usage,
    normalised usage, LevelFS, and each user's fair-share factor."""
    users = [(a, u) for a, u in members if a in shares]
    factors = fair_share_factors(shares, fair, users)
    subtree: dict[str, float] = defaultdict(float)
    for (account, _user), v in fair.items():
        parts = account.split("/")
        for i in range(1, len(parts) + 1):
            subtree["/".join(parts[:i])] += v
    siblings: dict[str, list[str]] = defaultdict(list)
    for path in shares:
        siblings[path.rsplit("/", 1)[0] if "/" in path else ""].append(path)
    rows: list[dict[str, object]] = []
    by_account: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for (account, user), factor in factors.items():
        by_account[account].append((user, factor))
    for path in sorted(shares):
        parent = path.rsplit("/", 1)[0] if "/" in path else ""
        share_sum = sum(shares[s] for s in siblings[parent])
        use_sum = sum(subtree[s] for s in siblings[parent])
        rows.append(
            {
                "account": path,
                "depth": path.count("/"),
                "user": None,
                "shares": shares[path],
                "norm_shares": shares[path] / share_sum if share_sum else 0.0,
                "usage": subtree[path],
                "norm_usage": subtree[path] / use_sum if use_sum else 0.0,
                "level_fs": level_fs(shares[path], share_sum, subtree[path], use_sum),
                "factor": None,
            }
        )
        for user, factor in sorted(by_account.get(path, [])):
            rows.append(
                {
                    "account": path,
                    "depth": path.count("/") + 1,
                    "user": user,
                    "shares": 1.0,
                    "norm_shares": None,
                    "usage": fair.get((path, user), 0.0),
                    "norm_usage": None,
                    "level_fs": None,
                    "factor": factor,
                }
            )
    return rows
