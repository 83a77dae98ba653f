"""The budget watch: raises each budget's alerts once, and makes a spent budget's hard stop
escalate for the work already running.

Every ``accounting.interval`` (and when the meter pokes it after a pass) it reads the budgets
in force with what they spent (``db.budgets.load_budgets``: the ledger's daily totals) and,
in one transaction:

1. records each threshold a budget crossed in its period (the policy's alerts, 1.0, and the
   hard stop's point when there is an overdraft) once in ``budget_alerts``, and hands the
   highest new one to the outbox (``db.notifications.enqueue_alert``) for the account's
   managers (the nearest up the tree that has any) and the owners of its running workloads;
2. for a spent budget with a hard stop, warns its running workloads (their reason says when)
   and, once ``grace`` has passed since the hard stop was reached, stops them with the
   reason, or steps them down to the budget's ``step_down`` profile (same process, that
   profile's rate and priority, preemptible).

New work is held by the scheduler itself (``scheduler.cycle``), which reads budgets every
cycle; a raised budget releases it at the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from allotment.clock import Clock
from allotment.config.models import Policy
from allotment.controller.view import ViewCache, load_policy_view
from allotment.db import workloads
from allotment.db.budgets import load_budgets
from allotment.db.engine import Database
from allotment.db.notifications import enqueue_alert, recipients
from allotment.db.outage import OutageLog, classify
from allotment.db.tables import Account, BudgetAlert, Pool, Profile, User, Workload
from allotment.domain.accounts import is_within
from allotment.domain.budgets import (
    BudgetStatus,
    crossed,
    money,
    period_label,
    stop_threshold,
)
from allotment.domain.workloads import WorkloadState as S

__all__ = ["BudgetWatch", "WatchPass", "alert_text"]

log = logging.getLogger("allotment.controller")


@dataclass
class WatchPass:
    """What one pass did: alerts raised (budget id, threshold), workloads warned, stopped
    and stepped down."""

    alerts: list[tuple[int, float]] = field(default_factory=list)
    warned: list[int] = field(default_factory=list)
    stopped: list[int] = field(default_factory=list)
    stepped_down: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class _Active:
    id: int
    user: str
    account: str
    pool: str
    profile: str | None
    running: bool


def alert_text(b: BudgetStatus, threshold: float) -> tuple[str, str]:
    """The subject and text of an alert that ``b`` crossed ``threshold``."""
    label = period_label(b.period)
    on = f" on pool '{b.pool}'" if b.pool else ""
    share = f"{b.fraction:.0%}"
    subject = f"Budget of {b.account}{on}: {share} spent {label}"
    text = (
        f"{b.account} has spent {money(b.spent, b.currency)} of its "
        f"{money(b.amount, b.currency)}{on} {label} ({share})."
    )
    if threshold < 1.0:
        if b.hard_stop:
            text += " When it is spent, new work is held and running work is stopped."
        return subject, text
    if not b.hard_stop:
        return subject, text + " This budget does not stop work; it only alerts."
    if b.blocked:
        then = f"stepped down to profile '{b.step_down}'" if b.step_down else "stopped"
        text = (
            f"{b.hold_reason}. New work is held; running work is {then} after {_minutes(b.grace)}."
        )
    else:
        text += (
            f" Work goes on within its overdraft of {money(b.overdraft, b.currency)}; "
            "beyond it, new work is held and running work is stopped."
        )
    return subject, text


def _minutes(seconds: float) -> str:
    m = round(seconds / 60)
    return f"{m} minute{'s' if m != 1 else ''}" if seconds >= 60 else f"{seconds:g} s"


class BudgetWatch:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        wake: Callable[[int], None] = lambda _w: None,
        nudge: Callable[[], None] = lambda: None,
        alerted: Callable[[], None] = lambda: None,
    ) -> None:
        self.db = db
        self.clock = clock
        #: Called with each workload told to stop (the reconciler stops it).
        self.wake = wake
        #: Called after work was stepped down (the scheduler may preempt it now).
        self.nudge = nudge
        #: Called after alerts were queued (the notifier delivers them).
        self.alerted = alerted
        self._views: ViewCache = {}
        self._poke = asyncio.Event()
        self.outage = OutageLog("budget watch", "passes failed", log)
        #: The policy's ``accounting.interval``, as of the last pass.
        self.interval = 60.0

    def poke(self) -> None:
        """Run a pass soon (the meter has just charged)."""
        self._poke.set()

    async def run(self) -> None:
        while True:
            interval = self.interval
            try:
                await self.pass_once()
                self.outage.recovered()
                # Read after the pass: the first one learns the policy's interval.
                interval = self.interval
            except Exception as e:
                if (outage := classify(e)) is None:
                    log.exception("budget watch pass failed; trying again")
                else:
                    self.outage.failed(outage)
                    interval = self.outage.backoff()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._poke.wait()
            self._poke.clear()

    async def pass_once(self) -> WatchPass:
        now = self.clock.now()
        done = await self.db.run_write(lambda s: self._pass(s, now))
        for wid in done.stopped:
            self.wake(wid)
        if done.stepped_down:
            self.nudge()
        if done.alerts:
            self.alerted()
        return done

    def _pass(self, session: Session, now: datetime) -> WatchPass:
        done = WatchPass()
        view = load_policy_view(session, self._views)
        if view is None:
            return done
        policy = view.policy
        self.interval = float(policy.accounting.interval)
        budgets = load_budgets(session, policy, now)
        if not budgets:
            return done
        active = _active(session)
        for b in budgets:
            mine = [
                w
                for w in active
                if is_within(w.account, b.account) and (b.pool is None or w.pool == b.pool)
            ]
            hard_since = self._alerts(session, policy, b, mine, now, done)
            if b.blocked and hard_since is not None:
                self._escalate(session, b, mine, hard_since, now, done)
        return done

    def _alerts(
        self,
        session: Session,
        policy: Policy,
        b: BudgetStatus,
        mine: list[_Active],
        now: datetime,
        done: WatchPass,
    ) -> datetime | None:
        """Record the thresholds ``b`` newly crossed, alert the highest; return when its hard
        stop was reached (None when it is not)."""
        marks = crossed(b)
        if not marks:
            return None
        raised = {
            t: at
            for t, at in session.execute(
                # Raised in this period: for a rolling one (whose start moves every day), in
                # the window it spans now, so a spent budget is not announced again each day.
                select(BudgetAlert.threshold, BudgetAlert.raised_at).where(
                    BudgetAlert.budget_id == b.id, BudgetAlert.raised_at >= b.period.start
                )
            )
        }
        new = [t for t in marks if not any(abs(t - r) < 1e-9 for r in raised)]
        for t in new:
            session.add(
                BudgetAlert(
                    budget_id=b.id,
                    period_start=b.period.start,
                    threshold=t,
                    spent=b.spent,
                    raised_at=now,
                    message=alert_text(b, t)[1],
                )
            )
            raised[t] = now
            done.alerts.append((b.id, t))
        if new:
            session.flush()
            top = new[-1]
            subject, text = alert_text(b, top)
            # A name with a slash is the headless admin's (``admin-token/<name>``), which no
            # hub user can have: it has no address.
            owners = sorted({w.user for w in mine if w.running and "/" not in w.user})
            users = [*b.managers, *owners]
            enqueue_alert(
                session,
                alert_key=f"budget:{b.id}:{b.period.start.isoformat()}:{top:g}",
                subject=subject,
                text=text,
                emails=recipients(policy, users),
                webhooks=policy.notifications.webhooks,
                payload={
                    "budget": b.id,
                    "account": b.account,
                    "pool": b.pool,
                    "period": b.period.period,
                    "period_start": b.period.start.isoformat(),
                    "threshold": top,
                    "spent": b.spent / 1e6,
                    "amount": b.amount / 1e6,
                    "overdraft": b.overdraft / 1e6,
                    "currency": b.currency,
                    "hard_stop": b.hard_stop,
                    "managers": list(b.managers),
                },
                now=now,
            )
        stop = stop_threshold(b)
        for t, at in raised.items():
            if abs(t - stop) < 1e-9:
                return at
        return None

    def _escalate(
        self,
        session: Session,
        b: BudgetStatus,
        mine: list[_Active],
        since: datetime,
        now: datetime,
        done: WatchPass,
    ) -> None:
        deadline = since + timedelta(seconds=b.grace)
        step_id = None
        if b.step_down:
            step_id = session.execute(
                select(Profile.id).where(Profile.name == b.step_down, Profile.archived_at.is_(None))
            ).scalar_one_or_none()
        conn = session.connection()
        for w in mine:
            if not w.running or (b.step_down is not None and w.profile == b.step_down):
                continue  # not yet running, or already stepped down: it goes on
            if now < deadline:
                then = (
                    f"It steps down to profile '{b.step_down}'"
                    if step_id is not None
                    else "It will be stopped"
                )
                reason = f"{b.hold_reason}. {then} at {deadline:%H:%M} UTC"
                if workloads.warn_running(conn, w.id, reason, now):
                    done.warned.append(w.id)
            elif step_id is not None:
                reason = f"stepped down to profile '{b.step_down}': {b.hold_reason}"
                if workloads.step_down(conn, w.id, step_id, reason, now):
                    done.stepped_down.append(w.id)
            elif workloads.request_stop(conn, w.id, f"stopped: {b.hold_reason}", now):
                done.stopped.append(w.id)


def _active(session: Session) -> list[_Active]:
    """Workloads that are running or about to (each meant to run), with what a budget needs."""
    rows = session.execute(
        select(
            Workload.id,
            User.name,
            Account.path,
            Pool.name,
            Profile.name,
            Workload.status,
        )
        .join(User, User.id == Workload.user_id)
        .join(Account, Account.id == Workload.account_id)
        .join(Pool, Pool.id == Workload.pool_id)
        .outerjoin(Profile, Profile.id == Workload.profile_id)
        .where(
            Workload.status.in_([int(S.ADMITTED), int(S.STARTING), int(S.RUNNING)]),
            Workload.target == int(S.RUNNING),
        )
    )
    return [
        _Active(wid, user, path, pool, profile, status == int(S.RUNNING))
        for wid, user, path, pool, profile, status in rows
    ]
