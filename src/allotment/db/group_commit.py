"""Group commit of new workloads: many requests, one transaction.

A durable commit costs a disk flush; one flush per submission caps the service at the disk's
flush rate, and on SQLite every writer waits for the one before. Submissions are therefore
queued and a single task commits whatever has gathered, in one transaction, before answering
each request. Nothing is answered before its commit, so a crash loses only unanswered
requests, which their clients retry (with an ``Idempotency-Key``, without duplicates).

A batch that fails (a constraint, a lost connection) is retried one row at a time, so one bad
row never fails the others.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from allotment.db.engine import Database
from allotment.db.outage import classify
from allotment.db.tables import WORKLOADS

__all__ = ["GroupCommit"]

log = logging.getLogger(__name__)


@dataclass
class _Item:
    values: dict[str, Any]
    done: asyncio.Future[tuple[int, bool]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class GroupCommit:
    """Inserts workloads in batches; ``insert`` answers (id, created) once committed."""

    def __init__(self, db: Database, max_batch: int = 500) -> None:
        self.db = db
        self.max_batch = max_batch
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="allotment-group-commit")

    async def stop(self) -> None:
        """Commit what is queued, then stop."""
        if self._task is None:
            return
        while not self._queue.empty():
            await asyncio.sleep(0.01)
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None

    async def insert(self, values: dict[str, Any]) -> tuple[int, bool]:
        """Insert one workload; (its id, True), or (the id of the one with the same
        idempotency key, False)."""
        if self._task is None:
            raise RuntimeError("GroupCommit.start() was not called")
        item = _Item(values)
        self._queue.put_nowait(item)
        return await item.done

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                results = await self._commit(batch)
            except Exception as e:
                if classify(e) is not None:
                    # The database is unavailable: each alone would fail the same way. Every
                    # request answers 503 (logged once, by the API), to be retried with its key.
                    for item in batch:
                        if not item.done.done():
                            item.done.set_exception(e)
                    continue
                log.warning("a batch of %d workloads failed; retrying one by one", len(batch))
                for item in batch:
                    try:
                        (result,) = await self._commit([item])
                    except Exception as e:  # answered to that request alone
                        if not item.done.done():
                            item.done.set_exception(e)
                    else:
                        if not item.done.done():
                            item.done.set_result(result)
                continue
            for item, result in zip(batch, results, strict=True):
                if not item.done.done():
                    item.done.set_result(result)

    def _insert(self, dialect: str) -> postgresql.Insert | sqlite.Insert:
        return postgresql.insert(WORKLOADS) if dialect == "postgresql" else sqlite.insert(WORKLOADS)

    async def _commit(self, batch: list[_Item]) -> list[tuple[int, bool]]:
        # Core statements on a bare connection: the ORM's unit of work costs more than the
        # insert itself, and nothing here needs identity tracking.
        results: list[tuple[int, bool] | None] = [None] * len(batch)
        table = WORKLOADS
        async with self.db.writer.begin() as conn:
            dialect = conn.dialect.name
            plain = [i for i, item in enumerate(batch) if not item.values.get("idempotency_key")]
            if plain:
                stmt = self._insert(dialect).returning(table.c.id, sort_by_parameter_order=True)
                rows = await conn.execute(stmt, [batch[i].values for i in plain])
                for i, wid in zip(plain, rows.scalars(), strict=True):
                    results[i] = (wid, True)
            for i, item in enumerate(batch):
                if results[i] is not None:
                    continue
                keyed = (
                    self._insert(dialect)
                    .values(**item.values)
                    .on_conflict_do_nothing(index_elements=["user_id", "idempotency_key"])
                    .returning(table.c.id)
                )
                wid = (await conn.execute(keyed)).scalar_one_or_none()
                if wid is not None:
                    results[i] = (wid, True)
                    continue
                earlier = await conn.execute(
                    select(table.c.id).where(
                        table.c.user_id == item.values["user_id"],
                        table.c.idempotency_key == item.values["idempotency_key"],
                    )
                )
                results[i] = (earlier.scalar_one(), False)
        return [r for r in results if r is not None]
