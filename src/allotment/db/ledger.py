"""The ledger's one path: the meter's pass over running workloads, charges for work Allotment
did not submit, and the readers everything else asks "what was spent" (docs/design/0004-ledger.md).

A pass is one transaction of set-based statements, the same on SQLite and PostgreSQL: it
opens a charge for each workload that started since the last pass, moves every open charge on
to ``now`` (or the workload's end) adding what that cost to the day's totals, writes a ledger
entry (under its unique key) for each span of the clock that ended and for each workload that
ended, refunds workloads that ended for a reason of ours, and starts a new span where a
workload's price changed. Killed at any point, or with the database gone mid-pass, none of it
happened and the next pass does it all; the keys make a second write of an entry fail rather
than count twice. So ``sum(usage_days.amount) == sum(ledger_entries.amount) + sum(open
charges' amount not yet closed)`` always.

The pass itself is synchronous (``Database.run_write`` hands it one transaction); the readers
take the API's async session.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from types import SimpleNamespace
from typing import Any
from typing import cast as cast_table

from sqlalchemy import (
    BigInteger,
    Date,
    Float,
    String,
    Table,
    and_,
    bindparam,
    case,
    cast,
    exists,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from allotment.db.tables import (
    WORKLOADS,
    Heartbeat,
    LedgerEntry,
    OpenCharge,
    Pool,
    UsageDay,
    UtcDateTime,
)
from allotment.domain import ledger as rules
from allotment.domain.ledger import Measured
from allotment.domain.resources import Resources
from allotment.domain.workloads import WorkloadState as S

__all__ = [
    "Pass",
    "Price",
    "PriceOf",
    "ExternalCharge",
    "charge_external",
    "charge_externals",
    "close_run",
    "external_marks",
    "mark_external",
    "meter_pass",
    "spent",
    "spent_by_account",
    "totals",
    "workload_cost",
]

GIB = 2**30
#: The heartbeat row of the meter's last pass (``db/heartbeat.py``'s table).
METER = "meter"
#: Seconds after its last pass past which the meter is taken to be stuck (readers may say so).
STALE = 600.0
#: How far before the last pass's time a workload's start may lie and still be found as new:
#: its start is stamped before the write that records it commits.
SLACK = timedelta(minutes=5)

OC = cast_table(Table, OpenCharge.__table__)
LE = cast_table(Table, LedgerEntry.__table__)
UD = cast_table(Table, UsageDay.__table__)
W = WORKLOADS.c
_USAGE_KEY = ("day", "account_id", "user_id", "pool_id", "profile_id")
_SUMS = ("amount", "cpu_seconds", "memory_gib_seconds", "gpu_seconds", "share_seconds")


@dataclass(frozen=True, slots=True)
class Price:
    """What an hour of a workload costs and how much of its pool it holds."""

    #: Millionths of the currency per hour of what it requested.
    rate: int
    #: Dominant share of its pool's capacity (fair share's usage per second).
    share: float


#: (pool id, requested resources) → its price now; the controller knows the policy's rates
#: and the pools' capacity, the database does not.
PriceOf = Callable[[int | None, Resources], Price]


@dataclass
class Pass:
    """What one pass did, for the log and the benchmark."""

    opened: int = 0
    advanced: int = 0
    entries: int = 0
    closed: int = 0
    refunds: int = 0
    repriced: int = 0
    measured: int = 0
    steps: int = 0


# -- SQL pieces that differ between the databases --------------------------------------------


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def _iso(dialect: str, t: Any) -> ColumnElement[str]:
    """``rules.iso(t)`` in SQL: the entries' keys are written by the database."""
    if dialect == "postgresql":
        return func.to_char(func.timezone("UTC", t), 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
    # SQLAlchemy stores SQLite's timestamps as 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC).
    return func.replace(cast(t, String), " ", "T").concat("Z")


def _insert(dialect: str, table: Any) -> Any:
    return postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)


def _upsert_usage(dialect: str, rows_or_select: Any) -> Any:
    """Add to the day's totals (one row per day, account, user, pool and profile)."""
    stmt = _insert(dialect, UD)
    if not isinstance(rows_or_select, list):
        stmt = stmt.from_select([*_USAGE_KEY, *_SUMS, "used_cpu_seconds"], rows_or_select)
    return stmt.on_conflict_do_update(
        index_elements=list(_USAGE_KEY),
        set_={c: UD.c[c] + stmt.excluded[c] for c in (*_SUMS, "used_cpu_seconds")},
    )


def _count(result: Any) -> int:
    """Rows a statement changed."""
    return int(cast_table(CursorResult[Any], result).rowcount or 0)


def _ts(name: str, value: datetime) -> Any:
    return bindparam(name, value, type_=UtcDateTime())


# -- the pass ----------------------------------------------------------------------------------


def meter_pass(
    session: Session,
    *,
    now: datetime,
    entry_seconds: int,
    tz: str,
    price_of: PriceOf,
    reprice_all: bool = False,
    measured: Mapping[int, Measured] | None = None,
) -> Pass:
    """Charge every running workload up to ``now``, in the caller's one transaction.

    ``reprice_all``: compare every open charge's price with ``price_of`` (the policy changed,
    or this meter has not looked since it started); otherwise only charges whose workload's
    pool, profile or size changed are repriced. ``measured``: what the backends measured of
    running workloads since the last pass."""
    dialect = _dialect(session)
    if dialect == "postgresql":
        # Every statement of the pass sees the same workloads: an end committed between two
        # of them must not be counted by one and not the other.
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    done = Pass()
    since = session.execute(select(Heartbeat.at).where(Heartbeat.name == METER)).scalar()
    done.opened, first = _open_new(session, now, since, price_of)
    _mark_ends(session, since)
    if measured:
        done.measured = _record_measured(session, dialect, now, tz, measured)
    if since is not None:
        # Every open charge was moved to the last pass's time by it, or opened since.
        lo: datetime | None = min(since, first) if first is not None else since
    else:
        lo = session.execute(select(func.min(OC.c.charged_through)).where(~OC.c.closed)).scalar()
    if lo is not None:
        for cut in rules.cuts(lo, now, entry_seconds, tz):
            _step(session, dialect, done, cut, rules.is_boundary(cut, entry_seconds), tz, now)
    done.repriced = _reprice(session, dialect, now, price_of, reprice_all)
    return done


#: What opening a workload's charge reads of it (and of its pool).
_STARTED = (
    W.account_id,
    W.user_id,
    W.pool_id,
    W.profile_id,
    W.millicpus,
    W.memory,
    W.gpus,
    W.started_at,
    Pool.backend,
)


def _open_values(workload_id: int, w: Any, price_of: PriceOf) -> dict[str, Any]:
    """The row of a new open charge of a started workload ``w`` (``_STARTED``'s columns),
    from its start, nothing charged yet."""
    requested = Resources(w.millicpus, w.memory, w.gpus or {})
    price = price_of(w.pool_id, requested)
    ms = rules.epoch_ms(w.started_at)
    return {
        "workload_id": workload_id,
        "account_id": w.account_id,
        "user_id": w.user_id,
        "pool_id": w.pool_id,
        "profile_id": w.profile_id,
        "source": w.backend or "",
        "millicpus": w.millicpus,
        "memory": w.memory,
        "gpus": dict(w.gpus or {}),
        "gpu_count": requested.gpu_count,
        "rate": price.rate,
        "share": price.share,
        "span_start": w.started_at,
        "charged_through": w.started_at,
        "start_ms": ms,
        "through_ms": ms,
        "end_ms": None,
        "ends_at": None,
        "amount": 0,
        "closed": False,
    }


def _open_new(
    session: Session, now: datetime, since: datetime | None, price_of: PriceOf
) -> tuple[int, datetime | None]:
    """An open charge for each workload that started since the last pass, from its start;
    how many, and the earliest start among them."""
    _beat(session, now)
    started = W.started_at.is_not(None)
    if since is None:  # the first pass ever: whatever runs now, and what just ran
        recent = or_(W.status.in_([int(S.RUNNING), int(S.STOPPING)]), W.started_at >= now - SLACK)
    else:
        recent = W.started_at >= since - SLACK
    rows = session.execute(
        select(W.id, *_STARTED)
        .outerjoin(Pool, Pool.id == W.pool_id)
        .where(started, recent, ~exists().where(OC.c.workload_id == W.id))
    ).all()
    if not rows:
        return 0, None
    values = [_open_values(r.id, r, price_of) for r in rows]
    session.execute(insert(OC), values)
    return len(values), min(r.started_at for r in rows)


def _beat(session: Session, now: datetime) -> None:
    """The time of this pass, with its work: the next finds new workloads from it."""
    stmt = _insert(_dialect(session), Heartbeat.__table__).values(
        name=METER, at=now, stale_after=STALE
    )
    session.execute(
        stmt.on_conflict_do_update(index_elements=["name"], set_={"at": now, "stale_after": STALE})
    )


def _mark_ends(session: Session, since: datetime | None) -> None:
    """Copy onto each open charge where its workload ended, for those that ended since the
    last pass (by the index on ``ended_at``): the pass's statements then read open charges
    alone. An end stamped before the charge's last pass (it committed after that pass) is
    taken as that pass: charges never go backwards."""
    if since is None:
        return
    rows = session.execute(
        select(OC.c.workload_id, OC.c.charged_through, W.ended_at)
        .select_from(WORKLOADS.join(OC, OC.c.workload_id == W.id))
        .where(W.ended_at >= since - SLACK, ~OC.c.closed, OC.c.end_ms.is_(None))
    ).all()
    if not rows:
        return
    ends = [
        {"wid": r.workload_id, "ends_at": e, "end_ms": rules.epoch_ms(e)}
        for r in rows
        for e in [max(r.ended_at, r.charged_through)]
    ]
    session.execute(
        update(OC)
        .where(OC.c.workload_id == bindparam("wid"))
        .values(ends_at=bindparam("ends_at"), end_ms=bindparam("end_ms")),
        ends,
    )


def _ended() -> ColumnElement[bool]:
    """The charge has reached its workload's end."""
    return and_(OC.c.end_ms.is_not(None), OC.c.through_ms >= OC.c.end_ms)


def _step(
    session: Session,
    dialect: str,
    done: Pass,
    cut: datetime,
    boundary: bool,
    tz: str,
    now: datetime,
) -> None:
    """Move every open charge on to ``cut`` (or its workload's end), then close what ended.

    Between the previous cut and this one no charge crosses a midnight or a span's end, so
    the whole step adds to one day's totals. The arithmetic is on integer milliseconds."""
    c = rules.epoch_ms(cut)
    day = rules.day_of(cut - timedelta(microseconds=1), tz)
    ending = and_(OC.c.end_ms.is_not(None), OC.c.end_ms < c)
    to = case((ending, OC.c.end_ms), else_=literal(c, BigInteger))
    amount = (OC.c.rate * (to - OC.c.start_ms) + 1_800_000) // 3_600_000
    seconds = cast(to - OC.c.through_ms, Float) / 1000.0
    moving = and_(~OC.c.closed, OC.c.through_ms < c)
    # The same text in the select and its grouping (a bound 0 would be two parameters).
    pool = func.coalesce(OC.c.pool_id, literal_column("0"))
    profile = func.coalesce(OC.c.profile_id, literal_column("0"))
    usage = (
        select(
            literal(day, Date),
            OC.c.account_id,
            OC.c.user_id,
            pool,
            profile,
            func.sum(amount - OC.c.amount),
            func.sum(seconds * OC.c.millicpus / 1000.0),
            func.sum(seconds * OC.c.memory / float(GIB)),
            func.sum(seconds * OC.c.gpu_count),
            func.sum(seconds * OC.c.share),
            literal(0.0),
        )
        .where(moving)
        .group_by(OC.c.account_id, OC.c.user_id, pool, profile)
    )
    session.execute(_upsert_usage(dialect, usage))
    running = (OC.c.rate * (c - OC.c.start_ms) + 1_800_000) // 3_600_000
    done.advanced += _count(
        session.execute(
            update(OC)
            .where(moving, ~ending)
            .values(amount=running, through_ms=c, charged_through=_ts("cut", cut))
        )
    )
    stopped = (OC.c.rate * (OC.c.end_ms - OC.c.start_ms) + 1_800_000) // 3_600_000
    done.advanced += _count(
        session.execute(
            update(OC)
            .where(moving, ending)
            .values(amount=stopped, through_ms=OC.c.end_ms, charged_through=OC.c.ends_at)
        )
    )
    done.steps += 1
    finished = [_ended()]
    if boundary:
        finished.append(OC.c.through_ms == c)
    done.entries += _write_entries(
        session, dialect, now, and_(~OC.c.closed, OC.c.through_ms > OC.c.start_ms, or_(*finished))
    )
    done.refunds += _refund(session, dialect, now, tz)
    closing = update(OC).where(~OC.c.closed, _ended())
    done.closed += _count(session.execute(closing.values(closed=True)))
    if boundary:
        session.execute(
            update(OC)
            .where(~OC.c.closed, OC.c.through_ms == c)
            .values(span_start=OC.c.charged_through, start_ms=OC.c.through_ms, amount=0)
        )


def _write_entries(session: Session, dialect: str, now: datetime, where: Any) -> int:
    """One ledger entry for each open charge ``where`` says: its span so far, at its rate.

    Measured CPU is cumulative on the charge; the entry gets what was used in its span."""
    before = (
        select(func.coalesce(func.sum(LE.c.used_cpu_seconds), 0.0))
        .where(LE.c.workload_id == OC.c.workload_id, LE.c.kind == "charge")
        .scalar_subquery()
    )
    key = literal("w:").concat(cast(OC.c.workload_id, String)).concat(":")
    rows = select(
        key.concat(_iso(dialect, OC.c.span_start)),
        literal("charge"),
        OC.c.source,
        OC.c.workload_id,
        OC.c.account_id,
        OC.c.user_id,
        OC.c.pool_id,
        OC.c.profile_id,
        OC.c.span_start,
        OC.c.charged_through,
        OC.c.millicpus,
        OC.c.memory,
        OC.c.gpus,
        OC.c.rate,
        OC.c.amount,
        OC.c.used_cpu_seconds - before,
        OC.c.peak_memory,
        OC.c.gpu_utilisation,
        literal(""),
        _ts("now", now),
    ).where(where)
    columns = [
        "key",
        "kind",
        "source",
        "workload_id",
        "account_id",
        "user_id",
        "pool_id",
        "profile_id",
        "start",
        "end",
        "millicpus",
        "memory",
        "gpus",
        "rate",
        "amount",
        "used_cpu_seconds",
        "peak_memory",
        "gpu_utilisation",
        "note",
        "created_at",
    ]
    return _count(session.execute(insert(LE).from_select(columns, rows)))


def _refund(session: Session, dialect: str, now: datetime, tz: str) -> int:
    """Refund, in full, each workload whose charge closes now and that ended for a reason
    of ours (``rules.OURS``): a new entry of the negative sum, never an edit."""
    charged = (
        select(func.coalesce(func.sum(LE.c.amount), 0))
        .where(LE.c.workload_id == OC.c.workload_id, LE.c.kind == "charge")
        .scalar_subquery()
    )
    rows = session.execute(
        select(OC, W.reason, charged.label("charged"))
        .select_from(OC.join(WORKLOADS, W.id == OC.c.workload_id))
        .where(
            ~OC.c.closed,
            _ended(),
            W.status == int(S.FAILED),
            or_(*(W.reason.like(p) for p in rules.OURS)),
        )
    ).all()
    entries: list[dict[str, Any]] = []
    # Taken back from the days (and accounts, users, pools, profiles) it was charged to, so
    # the period that paid gets it back, not the one the workload ended in.
    back: dict[tuple[date, int, int, int, int], int] = defaultdict(int)
    paid = [r.workload_id for r in rows if r.charged]
    if paid:
        for e in session.execute(
            select(
                LE.c.start,
                LE.c.account_id,
                LE.c.user_id,
                LE.c.pool_id,
                LE.c.profile_id,
                LE.c.amount,
            ).where(LE.c.workload_id.in_(paid), LE.c.kind == "charge")
        ):
            day = rules.day_of(e.start, tz)
            back[(day, e.account_id, e.user_id, e.pool_id or 0, e.profile_id or 0)] += e.amount
    for r in rows:
        if not r.charged:
            continue
        entries.append(
            {
                "key": rules.refund_key(r.workload_id),
                "kind": "refund",
                "source": r.source,
                "workload_id": r.workload_id,
                "account_id": r.account_id,
                "user_id": r.user_id,
                "pool_id": r.pool_id,
                "profile_id": r.profile_id,
                "start": r.charged_through,
                "end": r.charged_through,
                "millicpus": r.millicpus,
                "memory": r.memory,
                "gpus": r.gpus,
                "rate": r.rate,
                "amount": -r.charged,
                "note": f"refund: it ended for a reason of ours ({r.reason})"[:1000],
                "created_at": now,
            }
        )
    if entries:
        usage = []
        for (day, account_id, user_id, pool_id, profile_id), amount in back.items():
            key = SimpleNamespace(
                account_id=account_id, user_id=user_id, pool_id=pool_id, profile_id=profile_id
            )
            usage.append(_usage_row(day, key, amount=-amount))
        session.execute(insert(LE), entries)
        session.execute(_upsert_usage(dialect, usage), usage)
    return len(entries)


def _usage_row(day: date, r: Any, **sums: float) -> dict[str, Any]:
    row: dict[str, Any] = {
        "day": day,
        "account_id": r.account_id,
        "user_id": r.user_id,
        "pool_id": r.pool_id or 0,
        "profile_id": r.profile_id or 0,
        "used_cpu_seconds": 0.0,
    }
    row.update({c: 0 if c == "amount" else 0.0 for c in _SUMS})
    row.update(sums)
    return row


def _reprice(
    session: Session, dialect: str, now: datetime, price_of: PriceOf, everything: bool
) -> int:
    """Start a new span, at the new price, for each open charge whose price changed: a new
    policy's rates, or its workload moved to another profile or size (a budget's step-down).
    The old span's entry is written at the change; what comes after is charged anew."""
    changed = or_(
        OC.c.profile_id.is_distinct_from(W.profile_id),
        OC.c.pool_id.is_distinct_from(W.pool_id),
        OC.c.millicpus != W.millicpus,
        OC.c.memory != W.memory,
    )
    query = (
        select(
            OC.c.workload_id,
            OC.c.rate,
            OC.c.share,
            OC.c.gpus.label("charged_gpus"),
            W.pool_id,
            W.profile_id,
            W.millicpus,
            W.memory,
            W.gpus,
            changed.label("changed"),
        )
        .select_from(OC.join(WORKLOADS, W.id == OC.c.workload_id))
        .where(~OC.c.closed, true() if everything else changed)
    )
    updates = []
    for r in session.execute(query):
        requested = Resources(r.millicpus, r.memory, r.gpus or {})
        price = price_of(r.pool_id, requested)
        moved = bool(r.changed) or dict(r.charged_gpus or {}) != dict(r.gpus or {})
        if not moved and price.rate == r.rate and abs(price.share - r.share) < 1e-12:
            continue
        updates.append(
            {
                "wid": r.workload_id,
                "pool_id": r.pool_id,
                "profile_id": r.profile_id,
                "millicpus": r.millicpus,
                "memory": r.memory,
                "gpus": dict(r.gpus or {}),
                "gpu_count": requested.gpu_count,
                "rate": price.rate,
                "share": price.share,
            }
        )
    if not updates:
        return 0
    ids = [u["wid"] for u in updates]
    _write_entries(
        session,
        dialect,
        now,
        and_(OC.c.workload_id.in_(ids), OC.c.through_ms > OC.c.start_ms),
    )
    session.execute(
        update(OC)
        .where(OC.c.workload_id == bindparam("wid"))
        .values(
            span_start=OC.c.charged_through,
            start_ms=OC.c.through_ms,
            amount=0,
            **{k: bindparam(k) for k in updates[0] if k != "wid"},
        ),
        updates,
    )
    return len(updates)


def _record_measured(
    session: Session, dialect: str, now: datetime, tz: str, measured: Mapping[int, Measured]
) -> int:
    """Keep the latest measurement on each open charge; the CPU used since the last one is
    added to today's totals (efficiency reads it)."""
    rows = session.execute(
        select(
            OC.c.workload_id,
            OC.c.account_id,
            OC.c.user_id,
            OC.c.pool_id,
            OC.c.profile_id,
            OC.c.used_cpu_seconds,
            OC.c.peak_memory,
        ).where(OC.c.workload_id.in_(list(measured)), ~OC.c.closed)
    ).all()
    day = rules.day_of(now, tz)
    used: dict[tuple[int, int, int, int], float] = defaultdict(float)
    updates = []
    for r in rows:
        m = measured[r.workload_id]
        cpu = r.used_cpu_seconds if m.cpu_seconds is None else m.cpu_seconds
        if m.cpu_seconds is not None:
            used[(r.account_id, r.user_id, r.pool_id or 0, r.profile_id or 0)] += max(
                m.cpu_seconds - (r.used_cpu_seconds or 0.0), 0.0
            )
        peaks = [p for p in (r.peak_memory, m.peak_memory) if p is not None]
        updates.append(
            {
                "wid": r.workload_id,
                "used_cpu_seconds": cpu,
                "peak_memory": max(peaks) if peaks else None,
                "gpu_utilisation": m.gpu_utilisation,
            }
        )
    if updates:
        session.execute(
            update(OC)
            .where(OC.c.workload_id == bindparam("wid"))
            .values(
                used_cpu_seconds=bindparam("used_cpu_seconds"),
                peak_memory=bindparam("peak_memory"),
                gpu_utilisation=bindparam("gpu_utilisation"),
            ),
            updates,
        )
    usage = [
        {
            "day": day,
            "account_id": a,
            "user_id": u,
            "pool_id": p,
            "profile_id": q,
            **{c: 0 if c == "amount" else 0.0 for c in _SUMS},
            "used_cpu_seconds": seconds,
        }
        for (a, u, p, q), seconds in used.items()
    ]
    if usage:
        session.execute(_upsert_usage(dialect, usage), usage)
    return len(updates)


# -- work Allotment did not submit ----------------------------------------------------------


def charge_external(
    session: Session,
    *,
    source: str,
    external_id: str,
    account_id: int,
    user_id: int,
    pool_id: int | None,
    start: datetime,
    end: datetime,
    requested: Resources,
    rate: int,
    tz: str,
    now: datetime,
    profile_id: int | None = None,
    share: float = 0.0,
    measured: Measured | None = None,
) -> bool:
    """Charge [start, end) of work another system ran (a Slurm job Allotment did not submit),
    through the same ledger and totals. Idempotent by its key (``rules.external_key``):
    charging the same span again writes nothing and returns False; the day's totals change
    only when the entry is new."""
    dialect = _dialect(session)
    ms = rules.elapsed_ms(start, end)
    amount = rules.charge(rate, ms)
    m = measured or Measured()
    key = rules.external_key(source, external_id, start)
    stmt = (
        _insert(dialect, LE)
        .values(
            key=key,
            kind="charge",
            source=source,
            workload_id=None,
            external_id=external_id,
            account_id=account_id,
            user_id=user_id,
            pool_id=pool_id,
            profile_id=profile_id,
            start=start,
            end=end,
            millicpus=requested.millicpus,
            memory=requested.memory,
            gpus=dict(requested.gpus),
            rate=rate,
            amount=amount,
            used_cpu_seconds=m.cpu_seconds,
            peak_memory=m.peak_memory,
            gpu_utilisation=m.gpu_utilisation,
            note="",
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=["key"])
        .returning(LE.c.id)
    )
    if session.execute(stmt).scalar() is None:
        return False
    owner = _Owner(account_id, user_id, pool_id, profile_id)
    rows, before, reached = [], 0, 0
    for day, upto in rules.split_at_midnight(start, end, tz):
        part = rules.charge(rate, upto) - before
        seconds = (upto - reached) / 1000.0
        before, reached = before + part, upto
        rows.append(
            _usage_row(
                day,
                owner,
                amount=part,
                cpu_seconds=seconds * requested.cpus,
                memory_gib_seconds=seconds * requested.memory / GIB,
                gpu_seconds=seconds * requested.gpu_count,
                share_seconds=seconds * share,
            )
        )
    if m.cpu_seconds is not None and rows:
        rows[-1]["used_cpu_seconds"] = m.cpu_seconds
    session.execute(_upsert_usage(dialect, rows), rows)
    return True


@dataclass(frozen=True, slots=True)
class ExternalCharge:
    """One span of work Allotment did not submit: ``charge_external``'s arguments."""

    external_id: str
    account_id: int
    user_id: int
    pool_id: int | None
    start: datetime
    end: datetime
    requested: Resources
    rate: int
    profile_id: int | None = None
    share: float = 0.0
    measured: Measured | None = None


def charge_externals(
    session: Session,
    *,
    source: str,
    charges: Sequence[ExternalCharge],
    tz: str,
    now: datetime,
) -> int:
    """``charge_external`` for many spans at once (an import of a thousand Slurm jobs): one
    insert of their entries, skipping keys already written, and one upsert of the days' totals
    of those that were new, summed per day and owner first. The same amounts, the same days,
    the same idempotence; returns how many entries were new."""
    if not charges:
        return 0
    dialect = _dialect(session)
    rows, by_key = [], {}
    for c in charges:
        m = c.measured or Measured()
        key = rules.external_key(source, c.external_id, c.start)
        by_key[key] = c
        rows.append(
            {
                "key": key,
                "kind": "charge",
                "source": source,
                "workload_id": None,
                "external_id": c.external_id,
                "account_id": c.account_id,
                "user_id": c.user_id,
                "pool_id": c.pool_id,
                "profile_id": c.profile_id,
                "start": c.start,
                "end": c.end,
                "millicpus": c.requested.millicpus,
                "memory": c.requested.memory,
                "gpus": dict(c.requested.gpus),
                "rate": c.rate,
                "amount": rules.charge(c.rate, rules.elapsed_ms(c.start, c.end)),
                "used_cpu_seconds": m.cpu_seconds,
                "peak_memory": m.peak_memory,
                "gpu_utilisation": m.gpu_utilisation,
                "note": "",
                "created_at": now,
            }
        )
    stmt = _insert(dialect, LE).on_conflict_do_nothing(index_elements=["key"]).returning(LE.c.key)
    new = set(session.execute(stmt, rows).scalars())
    totals_: dict[tuple[date, int, int, int, int], dict[str, Any]] = {}
    for key in new:
        c = by_key[key]
        owner = _Owner(c.account_id, c.user_id, c.pool_id, c.profile_id)
        parts = _external_days(c.start, c.end, c.rate, c.requested, c.share, tz)
        if c.measured is not None and c.measured.cpu_seconds is not None and parts:
            parts[-1]["used_cpu_seconds"] = c.measured.cpu_seconds
        for part in parts:
            day = part.pop("day")
            at = (day, c.account_id, c.user_id, c.pool_id or 0, c.profile_id or 0)
            row = totals_.setdefault(at, _usage_row(day, owner))
            for column, value in part.items():
                row[column] += value
    if totals_:
        usage = list(totals_.values())
        session.execute(_upsert_usage(dialect, usage), usage)
    return len(new)


def _external_days(
    start: datetime, end: datetime, rate: int, requested: Resources, share: float, tz: str
) -> list[dict[str, Any]]:
    """[start, end) by the site's days: each day's part of the charge (telescoping, so the
    parts add up to the entry) and of the resource-seconds."""
    out, before, reached = [], 0, 0
    for day, upto in rules.split_at_midnight(start, end, tz):
        part = rules.charge(rate, upto) - before
        seconds = (upto - reached) / 1000.0
        before, reached = before + part, upto
        out.append(
            {
                "day": day,
                "amount": part,
                "cpu_seconds": seconds * requested.cpus,
                "memory_gib_seconds": seconds * requested.memory / GIB,
                "gpu_seconds": seconds * requested.gpu_count,
                "share_seconds": seconds * share,
                "used_cpu_seconds": 0.0,
            }
        )
    return out


@dataclass(frozen=True)
class _Owner:
    account_id: int
    user_id: int
    pool_id: int | None
    profile_id: int | None


# -- a run that ended while its workload lives on ------------------------------------------


def close_run(
    session: Session,
    workload_id: int,
    *,
    at: datetime,
    now: datetime,
    tz: str,
    entry_seconds: int,
    price_of: PriceOf | None = None,
) -> int:
    """End the charge of a workload's current run at ``at`` while the workload lives on (Slurm
    requeued it after a node failure): charge its open charge through ``at`` by the meter's
    rules (the day's totals, an entry for each span of the clock that ended on the way and one
    for the last), then remove the open charge, so that the next run (a new ``started_at``)
    gets a fresh one from its own start and the time in between is charged to nobody.

    Call it in the transaction that moves the workload out of RUNNING and clears its
    ``started_at`` (``db/workloads.requeue``): the meter opens a charge for a workload that
    started lately and has none, so a ``started_at`` left behind would be charged again.
    Like the meter, it never charges backwards: a charge a pass already moved past ``at``
    ends where it is. A run the meter never saw (it started and was requeued between two
    passes) is charged from its start when ``price_of`` says its price, else not at all.
    Never refunded here: the whole workload's refund, if it ends for a reason of ours, is the
    meter's. Returns the ledger entries written."""
    dialect = _dialect(session)
    row = session.execute(
        select(OC).where(OC.c.workload_id == workload_id).with_for_update()
    ).first()
    if row is None and price_of is not None:
        row = _open_one(session, workload_id, price_of)
    if row is None or row.closed:
        # Closed: its workload ended and its last entry is written. The row stays, or the
        # meter would find a recent start without a charge and charge the run again.
        return 0
    written = _close_one(session, dialect, row, at, now, tz, entry_seconds)
    session.execute(OC.delete().where(OC.c.workload_id == workload_id))
    return written


def _open_one(session: Session, workload_id: int, price_of: PriceOf) -> Any:
    """An open charge from the workload's start, as a pass would have opened it."""
    w = session.execute(
        select(*_STARTED)
        .outerjoin(Pool, Pool.id == W.pool_id)
        .where(W.id == workload_id, W.started_at.is_not(None))
    ).first()
    if w is None:
        return None
    values = _open_values(workload_id, w, price_of)
    values.update(used_cpu_seconds=None, peak_memory=None, gpu_utilisation=None)
    session.execute(insert(OC).values(**values))
    return SimpleNamespace(**values)


def _close_one(
    session: Session,
    dialect: str,
    row: Any,
    at: datetime,
    now: datetime,
    tz: str,
    entry_seconds: int,
) -> int:
    """``_step``'s arithmetic for one charge, cut by cut, up to its end: the same days, the
    same spans, the same amounts a pass would have written had the workload ended at ``at``."""
    end = max(at, row.charged_through)
    end_ms = max(rules.epoch_ms(at), row.through_ms)
    span_start, start_ms = row.span_start, row.start_ms
    through, through_ms, amount = row.charged_through, row.through_ms, row.amount
    usage: dict[date, dict[str, Any]] = {}
    entries: list[dict[str, Any]] = []
    before = session.execute(
        select(func.coalesce(func.sum(LE.c.used_cpu_seconds), 0.0)).where(
            LE.c.workload_id == row.workload_id, LE.c.kind == "charge"
        )
    ).scalar_one()
    for cut in rules.cuts(through, end, entry_seconds, tz):
        c = end_ms if cut == end else rules.epoch_ms(cut)
        running = rules.charge(row.rate, c - start_ms)
        seconds = (c - through_ms) / 1000.0
        day = rules.day_of(cut - timedelta(microseconds=1), tz)
        if c > through_ms:
            u = usage.setdefault(day, _usage_row(day, row))
            u["amount"] += running - amount
            u["cpu_seconds"] += seconds * row.millicpus / 1000.0
            u["memory_gib_seconds"] += seconds * row.memory / float(GIB)
            u["gpu_seconds"] += seconds * row.gpu_count
            u["share_seconds"] += seconds * row.share
        through, through_ms, amount = cut, c, running
        if (cut == end or rules.is_boundary(cut, entry_seconds)) and through_ms > start_ms:
            used = row.used_cpu_seconds
            entries.append(
                {
                    "key": rules.entry_key(row.workload_id, span_start),
                    "kind": "charge",
                    "source": row.source,
                    "workload_id": row.workload_id,
                    "account_id": row.account_id,
                    "user_id": row.user_id,
                    "pool_id": row.pool_id,
                    "profile_id": row.profile_id,
                    "start": span_start,
                    "end": through,
                    "millicpus": row.millicpus,
                    "memory": row.memory,
                    "gpus": row.gpus,
                    "rate": row.rate,
                    "amount": amount,
                    "used_cpu_seconds": None if used is None else used - before,
                    "peak_memory": row.peak_memory,
                    "gpu_utilisation": row.gpu_utilisation,
                    "note": "",
                    "created_at": now,
                }
            )
            if used is not None:
                before = used
            span_start, start_ms, amount = through, through_ms, 0
    if usage:
        rows = list(usage.values())
        session.execute(_upsert_usage(dialect, rows), rows)
    if entries:
        session.execute(insert(LE), entries)
    return len(entries)


# -- imports of work Allotment did not submit: where the last one got to ---------------------


def external_marks(session: Session, name: str) -> datetime | None:
    """Until when an import (``name``: its heartbeat row, e.g. ``slurm-import``) has charged
    everything it could see; None before its first."""
    return session.execute(select(Heartbeat.at).where(Heartbeat.name == name)).scalar()


def mark_external(session: Session, name: str, at: datetime, stale_after: float) -> None:
    """Record, in the transaction of its charges, that an import has charged through ``at``."""
    stmt = _insert(_dialect(session), Heartbeat.__table__).values(
        name=name, at=at, stale_after=stale_after
    )
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["name"], set_={"at": at, "stale_after": stale_after}
        )
    )


# -- readers -----------------------------------------------------------------------------------


async def spent(
    session: AsyncSession,
    *,
    account_ids: Collection[int],
    pool_id: int | None,
    first_day: date,
    last_day: date | None = None,
) -> int:
    """Millionths charged to these accounts (one pool's, or all pools' with None) from
    ``first_day`` through ``last_day`` (open-ended with None), refunds taken off: what a
    budget's period has spent, to the last pass."""
    query = select(func.coalesce(func.sum(UD.c.amount), 0)).where(
        UD.c.account_id.in_(list(account_ids)), UD.c.day >= first_day
    )
    if last_day is not None:
        query = query.where(UD.c.day <= last_day)
    if pool_id is not None:
        query = query.where(UD.c.pool_id == pool_id)
    return int((await session.execute(query)).scalar_one())


async def spent_by_account(session: AsyncSession, *, first_day: date) -> dict[tuple[int, int], int]:
    """Millionths charged since ``first_day``, by (account id, pool id; 0 for none)."""
    rows = await session.execute(
        select(UD.c.account_id, UD.c.pool_id, func.sum(UD.c.amount))
        .where(UD.c.day >= first_day)
        .group_by(UD.c.account_id, UD.c.pool_id)
    )
    return {(a, p): int(n) for a, p, n in rows}


async def workload_cost(session: AsyncSession, workload_id: int) -> int:
    """Millionths a workload has cost so far: its entries (refunds taken off) and its open
    charge, as of the last pass."""
    entries = select(func.coalesce(func.sum(LE.c.amount), 0)).where(LE.c.workload_id == workload_id)
    open_ = select(func.coalesce(func.sum(OC.c.amount), 0)).where(
        OC.c.workload_id == workload_id, ~OC.c.closed
    )
    total = (await session.execute(entries)).scalar_one()
    total += (await session.execute(open_)).scalar_one()
    return int(total)


def totals(session: Session) -> tuple[int, int, int]:
    """(sum of the days' totals, sum of the entries, sum of the open charges): the first is
    always the sum of the other two (the tests' and ``allot``'s consistency check)."""
    days = session.execute(select(func.coalesce(func.sum(UD.c.amount), 0))).scalar_one()
    entries = session.execute(select(func.coalesce(func.sum(LE.c.amount), 0))).scalar_one()
    open_ = session.execute(
        select(func.coalesce(func.sum(OC.c.amount), 0)).where(~OC.c.closed)
    ).scalar_one()
    return int(days), int(entries), int(open_)
