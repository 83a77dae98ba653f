"""Restoring a backup without running anything twice: `allot restore`'s work.

A backup is older than the world. A workload pending in it may have run since, one running in
it may have ended, and workloads submitted after it are not in it at all. What happened since
is known in two places: the database the restore replaces (kept aside, never deleted) and the
backends (``Backend.present``: what is left of a workload on them). The restore puts the
backup in place, brings its schema up to date, and then reconciles, here, where the database
and the backends meet (only the controller combines them), before any controller starts:

- a workload whose record in the database set aside is newer (same id, same submitter, same
  submission time) takes its execution state from there: its true outcome ("ran after the
  backup was taken; completed (exit status 0)"), or its placement while it still runs, which
  the controller then adopts at start, as after any restart;
- one that a backend holds something of but no database recorded (the one replaced is gone)
  is not started again: it ends FAILED, saying its outcome is unknown and why, and the
  controller's recovery reaps what is left of it;
- a workload submitted after the backup is not in it: one that still runs (the database set
  aside says so, or a backend holds something of it) is stopped by the controller's recovery,
  and one that waited will not run; both are listed (``Reconciled.gone``), so that the
  administrator can tell their owners;
- the next workload id is raised past every id the database set aside or a backend knew, so
  that the id of a workload submitted after the backup is never given to another (it names a
  run directory, control groups and output files).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from allotment.backends.base import Backend
from allotment.backends.registry import backends_for
from allotment.clock import Clock
from allotment.controller.lock import lock_path, service_lock_path, take_lock, take_service
from allotment.controller.view import load_policy_view
from allotment.db import workloads as transitions
from allotment.db.backup import (
    BackupError,
    Summary,
    check_dump,
    pg_restore,
    pg_set_aside,
    raise_workload_ids,
    restore_sqlite,
    sqlite_file,
    summarise,
)
from allotment.db.engine import Database
from allotment.db.tables import WORKLOADS
from allotment.domain.workloads import TERMINAL, WorkloadState
from allotment.installation import installation_of

__all__ = ["COPIED", "Reconciled", "Restored", "decide", "reconcile", "restore"]

log = logging.getLogger("allotment.restore")

S = WorkloadState
W = WORKLOADS.c

#: What a workload's newer record gives the restored one: how it ran, not what was asked.
COPIED = (
    "status",
    "target",
    "reason",
    "exit_code",
    "node",
    "placement",
    "position",
    "expected_start",
    "started_at",
    "ended_at",
    "last_activity",
    "updated_at",
)
#: Who submitted it and when: the same workload in both databases, not another with its id.
IDENTITY = ("id", "user_id", "created_at")

UNKNOWN = (
    "{what} after the backup was taken, and its outcome was lost with the database that "
    "recorded it; not run again"
)


@dataclass(frozen=True)
class Reconciled:
    """What the reconciliation changed in the restored database."""

    #: Workloads that took their newer record from the database set aside: id → reason.
    updated: Mapping[int, str] = field(default_factory=dict)
    #: Workloads ended FAILED because what became of them is known nowhere: id → reason.
    unknown: Mapping[int, str] = field(default_factory=dict)
    #: The largest workload id now taken; the next is larger.
    newest_id: int = 0
    #: Workloads submitted after the backup and unfinished when it was restored (not in it):
    #: id → what becomes of them.
    gone: Mapping[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Restored:
    """What `allot restore` did."""

    #: The database the backup replaced, kept: a path (SQLite) or a database name; None when
    #: there was none.
    aside: str | None
    summary: Summary
    reconciled: Reconciled


def decide(
    restored: Mapping[str, Any], earlier: Mapping[str, Any] | None, on_backend: bool
) -> tuple[str, dict[str, Any]] | None:
    """What to write over one unfinished workload of the restored database, or None.

    ``restored``: its row there (``COPIED`` and ``IDENTITY`` columns); ``earlier``: the same
    workload's row in the database set aside, None when that has none (or is gone);
    ``on_backend``: a backend holds something of it. Returns ("updated" or "unknown", values).
    """
    ran = "ran" if restored["placement"] is None else "ended"
    if earlier is not None:
        if all(earlier[c] == restored[c] for c in COPIED):
            return None
        values = {c: earlier[c] for c in COPIED}
        if earlier["status"] in {int(s) for s in TERMINAL}:
            values["reason"] = f"{ran} after the backup was taken; {earlier['reason']}"
        return "updated", values
    if restored["placement"] is None and not on_backend:
        return None  # never started: it waits and runs, once
    if restored["placement"] is not None and on_backend:
        return None  # the controller finds it from its placement, running or ended
    what = "started" if ran == "ran" else "ended"
    return "unknown", {"reason": UNKNOWN.format(what=what)}


def _unfinished(session: Session) -> list[dict[str, Any]]:
    columns = [W[c] for c in (*IDENTITY, *COPIED)]
    rows = session.execute(
        select(*columns).where(W.status.not_in([int(s) for s in TERMINAL])).order_by(W.id)
    )
    return [dict(r._mapping) for r in rows]


def _earlier(ids: Sequence[int]) -> Any:
    def read(session: Session) -> tuple[dict[int, dict[str, Any]], int]:
        found: dict[int, dict[str, Any]] = {}
        columns = [W[c] for c in (*IDENTITY, *COPIED)]
        for i in range(0, len(ids), 500):
            for r in session.execute(select(*columns).where(W.id.in_(ids[i : i + 500]))):
                found[r.id] = dict(r._mapping)
        newest = session.execute(select(func.max(W.id))).scalar_one() or 0
        return found, int(newest)

    return read


GONE_RUNNING = "submitted after the backup was taken; {status}: it will be stopped"
GONE_WAITING = (
    "submitted after the backup was taken; {status}: it will not run (its owner may submit "
    "it again)"
)


def _open(session: Session) -> dict[int, int]:
    """Unfinished workloads: id → status."""
    rows = session.execute(
        select(W.id, W.status).where(W.status.not_in([int(s) for s in TERMINAL]))
    )
    return {int(r.id): int(r.status) for r in rows}


def _existing(ids: Sequence[int]) -> Any:
    def read(session: Session) -> set[int]:
        found: set[int] = set()
        for i in range(0, len(ids), 500):
            found |= set(session.scalars(select(W.id).where(W.id.in_(ids[i : i + 500]))))
        return found

    return read


async def _gone(restored: Database, earlier: Database | None, present: set[int]) -> dict[int, str]:
    """Unfinished workloads (in the database set aside, or on a backend) that the backup does
    not hold: what becomes of each."""
    open_before = await earlier.run_read(_open) if earlier is not None else {}
    candidates = sorted(set(open_before) | present)
    kept = await restored.run_read(_existing(candidates))
    gone: dict[int, str] = {}
    for wid in candidates:
        if wid in kept:
            continue
        status = open_before.get(wid)
        label = S(status).label if status is not None else "running"
        if wid in present or (status is not None and status >= S.STARTING):
            gone[wid] = GONE_RUNNING.format(status=label)
        else:
            gone[wid] = GONE_WAITING.format(status=label)
    return gone


async def reconcile(
    restored: Database,
    earlier: Database | None,
    backends: Mapping[str, Backend],
    clock: Clock,
) -> Reconciled:
    """Tell the restored database what happened since its backup (module docstring)."""
    unfinished = await restored.run_read(_unfinished)
    newer: dict[int, dict[str, Any]] = {}
    newest = 0
    if earlier is not None:
        newer, newest = await earlier.run_read(_earlier([r["id"] for r in unfinished]))
    present: set[int] = set()
    for backend in backends.values():
        present |= await backend.present()
    plan: list[tuple[int, int, str, dict[str, Any]]] = []
    for row in unfinished:
        same = newer.get(row["id"])
        if same is not None and any(same[c] != row[c] for c in IDENTITY):
            same = None  # another workload with its id: the restored one's own is gone
        choice = decide(row, same, row["id"] in present)
        if choice is not None:
            plan.append((row["id"], row["status"], *choice))
    floor = max([newest, *present])
    now: datetime = clock.now()

    def write(session: Session) -> int:
        conn = session.connection()
        for wid, status, kind, values in plan:
            if kind == "updated":
                conn.execute(
                    update(WORKLOADS).where(W.id == wid, W.status == status).values(**values)
                )
            else:
                transitions.to_ended(conn, wid, S.FAILED, [S(status)], now, reason=values["reason"])
        return raise_workload_ids(conn, floor)

    gone = await _gone(restored, earlier, present)
    taken = await restored.run_write(write)
    return Reconciled(
        updated={w: v["reason"] for w, _, k, v in plan if k == "updated"},
        unknown={w: v["reason"] for w, _, k, v in plan if k == "unknown"},
        newest_id=taken,
        gone=gone,
    )


class RestoreRefused(BackupError):
    """The restore cannot start (a service of the installation runs)."""


async def restore(
    backup: Path,
    database_url: str,
    data_dir: Path,
    clock: Clock,
    *,
    installation: str | None = None,
    backends: Mapping[str, Backend] | None = None,
) -> Restored:
    """Put ``backup`` in place of the installation's database and reconcile (module docstring).

    Holds the installation's service and controller locks throughout (``controller/lock.py``):
    refused (RestoreRefused) while any service of the installation runs, with or without its
    controller, and none can start meanwhile.
    ``backends``: None builds the policy's from the registry, as the controller does."""
    service = take_service(data_dir)
    lock = None
    try:
        if service is not None:
            lock = take_lock(data_dir, installation_of(installation, data_dir))
    finally:
        if service is not None and lock is None:  # refused, or NameInUse raised
            service.close()
    if service is None or lock is None:
        held = service_lock_path(data_dir) if service is None else lock_path(data_dir)
        raise RestoreRefused(
            f"a service of this installation is running (it holds {held}); "
            "stop it (every `allot serve` of this data directory, or `systemctl stop` the unit "
            "that runs it) and run `allot restore` again"
        )
    built: dict[str, Backend] = {}
    db = earlier = None
    try:
        stamp = clock.now().strftime("%Y%m%d-%H%M%S")
        path = sqlite_file(database_url)
        aside: str | None
        if path is not None:
            moved = restore_sqlite(backup, path, stamp)
            aside = str(moved) if moved is not None else None
            earlier_url = f"sqlite+aiosqlite:///{moved}" if moved is not None else None
        else:
            check_dump(backup)
            earlier_url = await pg_set_aside(database_url, stamp)
            aside = earlier_url.rsplit("/", 1)[-1].split("?")[0]
            try:
                pg_restore(backup, database_url, data_dir)
            except BackupError as e:
                raise BackupError(
                    f"{e}; the database as it was before is kept as {aside!r}: to go back, "
                    "drop the new one and rename that to its name"
                ) from None
        db = Database(database_url)
        await db.upgrade()
        earlier = Database(earlier_url) if earlier_url is not None else None
        if backends is None:
            view = await db.run_read(load_policy_view)
            if view is not None:
                built = backends_for(view.policy, data_dir, installation=installation)
            backends = built
        reconciled = await reconcile(db, earlier, backends, clock)
        summary = await db.run_read(lambda s: summarise(s.connection()))
        for wid, reason in {
            **reconciled.updated,
            **reconciled.unknown,
            **reconciled.gone,
        }.items():
            log.info("workload %s: %s", wid, reason)
        return Restored(aside, summary, reconciled)
    finally:
        for b in built.values():
            await b.close()
        for d in (db, earlier):
            if d is not None:
                await d.dispose()
        lock.close()
        service.close()
