"""The usage import: jobs researchers submit to Slurm directly become charges, exactly once.

Every ``accounting.interval`` it asks ``sacct`` (one call, through the backend's runner) for
the jobs pending or running since its watermark less a margin, picks those that belong to
this installation's accounts, users and Slurm pools (``backends/slurm/usage.py``), and charges
each span of the clock that is over (``db.ledger.charge_external``: keyed by cluster, job id,
submit time and span, so re-reads, overlapping windows and restarts write nothing new). The
watermark (the heartbeat row ``slurm-import``: the instant of the last complete import) is
written in the same transaction as the charges. The margin covers accounting that reaches
``slurmdbd`` late; when ``sacct`` fails (slurmctld or slurmdbd down) the round is skipped,
said once, and the next one reads from the same watermark.

Jobs Allotment submitted are workloads, charged by the meter: never imported.
"""

from __future__ import annotations

import asyncio
import logging
import pwd
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from allotment.backends.identity import refusal
from allotment.backends.slurm import names
from allotment.backends.slurm.usage import (
    SOURCE,
    Piece,
    SlurmJob,
    SlurmPool,
    Targets,
    hub_users,
    parse_sacct,
    plan,
    sacct_argv,
)
from allotment.clock import Clock
from allotment.controller.quote import rates_of
from allotment.controller.view import PolicyView, ViewCache, load_policy_view
from allotment.db.engine import Database
from allotment.db.ledger import (
    ExternalCharge,
    charge_externals,
    external_marks,
    mark_external,
)
from allotment.db.outage import OutageLog, classify
from allotment.db.tables import Account, Pool, User, Workload
from allotment.domain.resources import Resources
from allotment.scheduler.usage import dominant_share

__all__ = ["IMPORT", "Imported", "SlurmUsageImport"]

log = logging.getLogger("allotment.controller")

#: The heartbeat row that keeps the import's watermark.
IMPORT = "slurm-import"
#: Seconds between rounds while no policy says (``accounting.interval``'s default).
DEFAULT_INTERVAL = 60.0


class _Completed(Protocol):
    @property
    def stdout(self) -> str | bytes: ...


class _Runner(Protocol):
    """``backends/slurm/runner.SlurmRunner``: the one seam every Slurm command goes through."""

    async def run(self, argv: Sequence[str]) -> Any: ...


@dataclass
class Imported:
    """What one round did, for the log, the tests and the benchmark."""

    jobs: int = 0
    #: Spans planned (over, and not before the watermark less the margin).
    planned: int = 0
    #: Spans charged now (the others were charged before).
    charged: int = 0
    #: Jobs left out, by why (``ours``, ``account``, ``user``, ``partition``, ``not started``).
    skipped: dict[str, int] = field(default_factory=dict)
    #: Seconds ``sacct`` took, and the database's part.
    sacct_seconds: float = 0.0
    write_seconds: float = 0.0


@dataclass(frozen=True)
class _Context:
    view: PolicyView
    #: Accounts and pools; its users are filled in once the round's jobs are known.
    targets: Targets
    #: Hub user name → id (the users table).
    users: dict[str, int]
    since: datetime | None


class SlurmUsageImport:
    """Imports Slurm's accounting of jobs Allotment did not submit (issue 15, item 6).

    ``runner``: the Slurm backend's runner (``sacct`` runs as root: ``-a`` reads every user's
    jobs). ``margin``: how far before its watermark each round reads again (accounting that
    reaches slurmdbd late, e.g. after slurmdbd was down). ``lookback``: how far back the very
    first round reads (earlier history stays Slurm's)."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        runner: _Runner,
        *,
        installation: str | None = None,
        margin: timedelta = timedelta(hours=1),
        lookback: timedelta = timedelta(days=1),
    ) -> None:
        self.db = db
        self.clock = clock
        self.runner = runner
        #: The installation whose workloads' jobs are charged by its meter, not imported; None
        #: trusts any job named like an installation's (``names.OURS``).
        self.installation = installation
        self.margin = margin
        self.lookback = lookback
        self.interval = DEFAULT_INTERVAL
        self.last: Imported | None = None
        self._views: ViewCache = {}
        self._slurm_down = False
        self.outage = OutageLog("slurm-import", "imports failed", log)

    async def run(self) -> None:
        while True:
            try:
                await self.import_once()
                self.outage.recovered()
            except Exception as e:
                if (outage := classify(e)) is None:
                    log.exception("importing Slurm's usage failed; trying again")
                else:
                    self.outage.failed(outage)
            await asyncio.sleep(self.interval)

    async def import_once(self, now: datetime | None = None) -> Imported:
        """One round: charge every span of a direct job that is over by ``now`` (the clock's)."""
        at = now or self.clock.now()
        context = await self.db.run_read(partial(self._read, at=at))
        done = Imported()
        if context is None:
            return done
        accounting = context.view.policy.accounting
        self.interval = float(accounting.interval)
        since = context.since or at - self.lookback
        mono = time.monotonic()
        try:
            completed = await self.runner.run(sacct_argv(int((at - since).total_seconds()) + 1))
        except Exception as e:  # Slurm down: nothing is concluded, the watermark stays
            if not self._slurm_down:
                log.warning("importing Slurm's usage waits: sacct failed (%s)", _short(e))
            self._slurm_down = True
            return done
        if self._slurm_down:
            log.info("importing Slurm's usage again: sacct answers")
            self._slurm_down = False
        done.sacct_seconds = time.monotonic() - mono
        jobs = parse_sacct(completed.stdout)
        done.jobs = len(jobs)
        ours = None
        if self.installation is not None:
            mine = await self.db.run_read(partial(self._own_jobs, jobs=jobs))

            def ours(job: SlurmJob) -> bool:
                return (job.name, job.job_id) in mine

        planned, done.skipped = plan(
            jobs,
            replace(context.targets, users=_hub_users(context, {j.user for j in jobs})),
            now=at,
            entry_seconds=int(accounting.entry),
            since=context.since,
            dominant_share=dominant_share,
            ours=ours,
        )
        done.planned = len(planned)
        mono = time.monotonic()
        done.charged = await self.db.run_write(
            partial(
                _charge,
                pieces=planned,
                tz=accounting.time_zone,
                now=at,
                stale_after=10 * float(accounting.interval),
            )
        )
        done.write_seconds = time.monotonic() - mono
        self.last = done
        if done.charged:
            log.info("imported %d spans of %d Slurm jobs", done.charged, done.jobs)
        return done

    def _own_jobs(self, session: Session, *, jobs: Sequence[SlurmJob]) -> set[tuple[str, int]]:
        """(name, job id) of the jobs that are this installation's workloads: named after one
        and recorded in its placement. A name alone proves nothing (a user may call a job
        submitted directly ``allot.x.7``): such a job is imported like any other."""
        assert self.installation is not None
        named: dict[int, list[SlurmJob]] = {}
        for job in jobs:
            wid = names.workload_of(job.name, self.installation)
            if wid is not None:
                named.setdefault(wid, []).append(job)  # another user may use the name too
        if not named:
            return set()
        rows = session.execute(
            select(Workload.id, Workload.placement).where(Workload.id.in_(list(named)))
        )
        out = set()
        for wid, placement in rows:
            recorded = str((placement or {}).get("job_id"))
            out |= {(j.name, j.job_id) for j in named[wid] if str(j.job_id) == recorded}
        return out

    def _read(self, session: Session, *, at: datetime) -> _Context | None:
        view = load_policy_view(session, self._views)
        if view is None:
            return None
        policy = view.policy
        slurm_pools = [n for n, p in policy.pools.items() if p.backend == "slurm" and p.partition]
        if not slurm_pools or not policy.slurm.import_usage:
            return None
        mark = external_marks(session, IMPORT)
        pool_ids = {n: i for i, n in session.execute(select(Pool.id, Pool.name))}
        capacity: dict[str, Resources] = {}
        for n in view.nodes:
            capacity[n.pool] = capacity.get(n.pool, Resources()) + n.capacity
        pools = tuple(
            SlurmPool(
                pool_id=pool_ids[name],
                partition=str(policy.pools[name].partition),
                qos=policy.pools[name].qos,
                rates=rates_of(policy, name),
                capacity=capacity.get(name, Resources()),
            )
            for name in slurm_pools
            if name in pool_ids
        )
        accounts = {
            names.slurm_account(path): i
            for i, path in session.execute(select(Account.id, Account.path))
        }
        users = {name: i for i, name in session.execute(select(User.id, User.name))}
        targets = Targets(accounts=accounts, users={}, pools=pools)
        return _Context(view, targets, users, None if mark is None else mark - self.margin)


def _hub_users(context: _Context, posix_names: Iterable[str]) -> dict[str, int]:
    """The hub users behind the round's Slurm users (``usage.hub_users``), looking up only
    those accounts (a site's directory may hold many more, and may not list them all)."""
    local: dict[str, str] = {}
    for name in posix_names:
        try:
            local[name] = pwd.getpwnam(name).pw_gecos
        except (KeyError, UnicodeEncodeError, ValueError):
            continue
    existing = []
    rule = context.view.policy.identity.existing_accounts
    if rule is not None:
        for name in local:
            if name in context.users and refusal(pwd.getpwnam(name), name, rule) is None:
                existing.append(name)
    return hub_users(context.users, local, existing)


def _charge(
    session: Session, *, pieces: list[Piece], tz: str, now: datetime, stale_after: float
) -> int:
    """Charge the pieces not charged yet, and move the watermark, in one transaction."""
    charged = charge_externals(
        session,
        source=SOURCE,
        charges=[
            ExternalCharge(
                external_id=p.external_id,
                account_id=p.account_id,
                user_id=p.user_id,
                pool_id=p.pool_id,
                start=p.start,
                end=p.end,
                requested=p.resources,
                rate=p.rate,
                share=p.share,
                measured=p.measured,
            )
            for p in pieces
        ],
        tz=tz,
        now=now,
    )
    mark_external(session, IMPORT, now, stale_after)
    return charged


def _short(e: BaseException) -> str:
    text = str(getattr(e, "stderr", "") or e).strip().splitlines()
    return (text[-1] if text else type(e).__name__)[:300]
