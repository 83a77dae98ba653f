"""The reconciler's workers: each takes a workload off the work queue, reconciles it once,
and puts it back with a growing delay when that failed (the queue's backoff)."""

from __future__ import annotations

import logging

from allotment.backends.base import BackendUnavailable
from allotment.controller.reconciler import Reconciler
from allotment.controller.workqueue import WorkQueue
from allotment.db.outage import Outage, OutageLog, classify

__all__ = ["Workers"]

log = logging.getLogger("allotment.controller")

#: Longest wait between starts tried while a backend cannot start any (its disk is full):
#: short, since freeing space is all it takes and nobody tells the controller when.
BACKEND_MAX_BACKOFF = 2.0


class Workers:
    def __init__(self, queue: WorkQueue[int], reconciler: Reconciler) -> None:
        self.queue = queue
        self.reconciler = reconciler
        #: The database's outages, logged once each (all workers share it).
        self.outage = OutageLog("reconciler", "attempts failed", log)
        #: A backend that cannot start anything for now (``BackendUnavailable``: the local
        #: backend's data directory full), logged once, in its own words: it is not the
        #: database, which may well be on another machine.
        self.unstartable = OutageLog(
            "reconciler",
            "starts put off",
            log,
            max_backoff=BACKEND_MAX_BACKOFF,
            back="workloads can start again",
        )

    async def run(self) -> None:
        """One worker; the controller runs ``ControllerSettings.workers`` of them."""
        while True:
            wid = await self.queue.get()
            try:
                running = await self.reconciler.reconcile(wid)
            except BackendUnavailable as e:
                # Checked first: its cause (a full file system, ENOSPC) would read as the
                # database's disk. Never counted against the workload.
                self.unstartable.failed(Outage("unavailable", str(e)))
                self.queue.done(wid)
                self.queue.add_after(wid, self.unstartable.backoff(self.queue.base_delay))
            except Exception as e:
                if (outage := classify(e)) is None:
                    delay = self.queue.retry(wid)
                    log.warning("workload %s: %s; again in %.2g s", wid, e, delay)
                else:
                    # Not the workload's failure: its backoff stays short, so it carries on
                    # within seconds of the database coming back; the outage is logged once.
                    self.outage.failed(outage)
                    self.queue.done(wid)
                    self.queue.add_after(wid, self.outage.backoff())
            else:
                self.outage.recovered()
                self.queue.done(wid)
                if running is not None:
                    # A start went through (or a running workload was found): room again.
                    self.unstartable.recovered()
                    backend, placement = running
                    backend.watch(wid, placement, self.exited)

    def exited(self, workload: int) -> None:
        """The backend saw a workload it started end: record its end now."""
        self.reconciler.exited(workload)
        self.queue.add(workload)
