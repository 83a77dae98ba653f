"""Budgets: their periods in the site's time zone, what is left, what researchers are told,
and the admission rule (DESIGN §5).

Pure, so each rule is tested on its own. Money is in millionths of the policy's currency
("micros") wherever it is stored or summed, so sums are exact; it is shown with two decimals
("1,000.00 credits"). A budget of an account covers its whole subtree: a lab's spending counts
against its institute's budget too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

__all__ = [
    "MICROS",
    "BudgetStatus",
    "Period",
    "ask_text",
    "beyond_text",
    "crossed",
    "money",
    "over_budget",
    "period_bounds",
    "period_label",
    "spent_text",
    "stop_threshold",
]

#: Micros in one unit of the currency.
MICROS = 1_000_000

_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


@dataclass(frozen=True, slots=True)
class Period:
    """The days a budget counts now: whole days in the site's time zone, ``first_day`` to
    ``last_day`` inclusive; ``start``/``end`` are those days' bounds in UTC, [start, end)."""

    period: str
    first_day: date
    last_day: date
    start: datetime
    end: datetime

    @property
    def rolling(self) -> bool:
        return self.period.endswith("d")


def _midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(), zone).astimezone(UTC)


def _add_months(day: date, months: int) -> date:
    n = day.year * 12 + day.month - 1 + months
    return date(n // 12, n % 12 + 1, 1)


def period_bounds(period: str, now: datetime, time_zone: str) -> Period:
    """The period of kind ``period`` (``day``, ``week`` from Monday, ``month``, ``quarter``,
    ``year``, or ``Nd``: today and the N-1 days before) that contains ``now``, in
    ``time_zone`` (an IANA name). Its bounds are local midnights, so a day across a change
    to or from summer time is 23 or 25 hours long."""
    zone = ZoneInfo(time_zone)
    today = now.astimezone(zone).date()
    if period.endswith("d") and period[:-1].isdigit():
        first, after = today - timedelta(days=int(period[:-1]) - 1), today + timedelta(days=1)
    elif period == "day":
        first, after = today, today + timedelta(days=1)
    elif period == "week":
        first = today - timedelta(days=today.weekday())
        after = first + timedelta(days=7)
    elif period == "month":
        first = today.replace(day=1)
        after = _add_months(first, 1)
    elif period == "quarter":
        first = date(today.year, (today.month - 1) // 3 * 3 + 1, 1)
        after = _add_months(first, 3)
    elif period == "year":
        first, after = date(today.year, 1, 1), date(today.year + 1, 1, 1)
    else:
        raise ValueError(
            f"unknown budget period {period!r}; use day, week, month, quarter, year or Nd"
        )
    return Period(
        period, first, after - timedelta(days=1), _midnight(first, zone), _midnight(after, zone)
    )


def period_label(p: Period) -> str:
    """How the reason names the period: "for December", "in the last 30 days"."""
    first = p.first_day
    if p.rolling:
        n = (p.last_day - first).days + 1
        return "for today" if n == 1 else f"in the last {n} days"
    if p.period == "day":
        return f"for {first.day} {_MONTHS[first.month - 1]}"
    if p.period == "week":
        return f"for the week of {first.day} {_MONTHS[first.month - 1]}"
    if p.period == "month":
        return f"for {_MONTHS[first.month - 1]}"
    if p.period == "quarter":
        return f"for Q{(first.month - 1) // 3 + 1} {first.year}"
    return f"for {first.year}"


def money(micros: int | float, currency: str) -> str:
    """``1,000.00 credits``."""
    return f"{micros / MICROS:,.2f} {currency}"


def ask_text(managers: Sequence[str]) -> str:
    """Whom a researcher asks to raise a budget: the account's managers (or the nearest
    ancestor's), else an administrator."""
    if not managers:
        return "ask an administrator to raise it"
    names = list(managers)
    who = names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" or {names[-1]}"
    return f"ask {who} ({'manager' if len(names) == 1 else 'managers'}) to raise it"


def spent_text(
    account: str,
    spent: int,
    amount: int,
    period: Period,
    currency: str,
    managers: Sequence[str],
    *,
    pool: str | None = None,
    overdraft: int = 0,
) -> str:
    """Why new work is held once a budget is spent: "lab-a has spent 1,000.00 of its
    1,000.00 credits for December; ask alice (manager) to raise it"."""
    on = f" on pool '{pool}'" if pool else ""
    extra = f" (and its overdraft of {money(overdraft, currency)})" if overdraft else ""
    return (
        f"{account} has spent {money(spent, currency).rsplit(' ', 1)[0]} of its "
        f"{money(amount, currency)}{on} {period_label(period)}{extra}; {ask_text(managers)}"
    )


def over_budget(cost: float, committed: float, left: float) -> bool:
    """The admission rule (as Slurm's ``GrpTRESMins`` counts): a workload is held when its
    cost up to its maximum runtime, added to what running (and just admitted) workloads of
    the budget may still spend up to theirs, would go beyond what is left (the amount plus
    any overdraft, less what was spent). Free work is never held by a budget."""
    return cost > 0 and cost + committed > left


def beyond_text(
    cost: float, committed: float, left: float, overdraft: float, currency: str, budget: str
) -> str:
    """Why a workload waits although money is left: its cost up to its maximum runtime with
    what running ones may still spend would go beyond it (amounts in the currency's units)."""

    def m(x: float) -> str:
        return money(round(x * MICROS), currency)

    running = (
        f", with the {m(committed)} that running workloads may still spend," if committed else ""
    )
    od = f" (which includes an overdraft of {m(overdraft)})" if overdraft else ""
    return (
        f"its cost up to its maximum runtime ({m(cost)}){running} would go beyond the "
        f"{m(max(left, 0.0))} left {budget}{od}"
    )


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """A budget in force now, with what was spent in its period (the ledger's daily totals
    of the account's whole subtree, on its pool or on all pools)."""

    id: int
    #: The account's path; the budget covers its subtree.
    account: str
    #: None: across all pools.
    pool: str | None
    #: Per period, in micros.
    amount: int
    period: Period
    spent: int
    hard_stop: bool
    #: Seconds running workloads are warned before a spent budget stops them.
    grace: float
    #: Profile running workloads step down to instead of being stopped; None: stopped.
    step_down: str | None
    #: Micros that may be spent beyond ``amount`` before the hard stop.
    overdraft: int
    #: Fractions at which managers are told (1.0 is added: spent).
    alerts: tuple[float, ...]
    #: ``policy`` or ``api`` (a manager set it).
    origin: str
    currency: str
    #: Who may raise it: the account's managers, or the nearest ancestor's.
    managers: tuple[str, ...]

    @property
    def left(self) -> int:
        """Micros left before ``amount`` is spent; negative once beyond it."""
        return self.amount - self.spent

    @property
    def remaining(self) -> int:
        """Micros that may still be spent before the hard stop (with the overdraft)."""
        return self.amount + self.overdraft - self.spent

    @property
    def fraction(self) -> float:
        """Share of the amount spent; 1.0 for a budget of nothing."""
        return self.spent / self.amount if self.amount > 0 else 1.0

    @property
    def blocked(self) -> bool:
        """Hard stop reached: new work is held, running work stopped after the grace."""
        return self.hard_stop and self.remaining <= 0

    @property
    def hold_reason(self) -> str:
        return spent_text(
            self.account,
            self.spent,
            self.amount,
            self.period,
            self.currency,
            self.managers,
            pool=self.pool,
            overdraft=self.overdraft,
        )

    @property
    def name(self) -> str:
        """The budget in a sentence: "of lab-a's budget for December"."""
        on = f" on pool '{self.pool}'" if self.pool else ""
        return f"of {self.account}'s budget{on} {period_label(self.period)}"


def stop_threshold(status: BudgetStatus) -> float:
    """The fraction of the amount at which the hard stop begins: 1.0, or beyond it by the
    overdraft. The watch counts a spent budget's grace from when this was crossed."""
    if status.overdraft and status.amount:
        return 1.0 + status.overdraft / status.amount
    return 1.0


def crossed(status: BudgetStatus) -> list[float]:
    """The thresholds a budget has crossed in its period, lowest first: the policy's alerts,
    1.0 (spent) and, with an overdraft and a hard stop, the point the hard stop begins
    (``stop_threshold``), each raised once per period."""
    marks = {t: round(t * status.amount) for t in (*status.alerts, 1.0)}
    if status.hard_stop:
        marks[stop_threshold(status)] = status.amount + status.overdraft
    return sorted(t for t, at in marks.items() if status.spent >= at)
