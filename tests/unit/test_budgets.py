"""Budgets, pure: periods in the site's time zone, what researchers are told, thresholds, and
the admission rule in the scheduler (exact cases and hypothesis properties)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allotment.domain.budgets import (
    BudgetStatus,
    ask_text,
    beyond_text,
    crossed,
    money,
    over_budget,
    period_bounds,
    period_label,
    spent_text,
    stop_threshold,
)
from allotment.domain.costs import Rates
from allotment.scheduler import (
    AccountState,
    Admit,
    Allocation,
    BudgetLimit,
    Hold,
    Preempt,
    schedule,
)
from tests.support.builders import cpus
from tests.support.builders import pending as job
from tests.support.builders import running as run
from tests.support.builders import snapshot as snap

BERLIN = "Europe/Berlin"


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# -- periods --------------------------------------------------------------------------------


def test_calendar_periods_start_at_midnight_in_the_site_zone() -> None:
    # 23:30 UTC on 31 December is already 1 January in Berlin: a new day, week-of, month,
    # quarter and year there.
    now = at(2026, 12, 31, 23, 30)
    utc = {p: period_bounds(p, now, "UTC") for p in ("day", "week", "month", "quarter", "year")}
    assert utc["day"].first_day == date(2026, 12, 31)
    assert utc["year"].start == at(2026, 1, 1) and utc["year"].end == at(2027, 1, 1)
    assert utc["quarter"].first_day == date(2026, 10, 1)
    assert utc["quarter"].last_day == date(2026, 12, 31)
    berlin = {p: period_bounds(p, now, BERLIN) for p in ("day", "month", "quarter", "year")}
    assert berlin["day"].first_day == date(2027, 1, 1)
    assert berlin["year"].start == at(2026, 12, 31, 23)  # midnight in Berlin (UTC+1)
    assert berlin["year"].last_day == date(2027, 12, 31)
    assert berlin["month"].end == at(2027, 1, 31, 23)
    assert berlin["quarter"].end == at(2027, 3, 31, 22)  # summer time by then (UTC+2)


def test_a_week_starts_on_monday() -> None:
    p = period_bounds("week", at(2026, 12, 2, 12), "UTC")  # a Wednesday
    assert (p.first_day, p.last_day) == (date(2026, 11, 30), date(2026, 12, 6))


def test_days_across_summer_time_are_23_and_25_hours() -> None:
    spring = period_bounds("day", at(2026, 3, 29, 12), BERLIN)
    autumn = period_bounds("day", at(2026, 10, 25, 12), BERLIN)
    assert spring.end - spring.start == timedelta(hours=23)
    assert autumn.end - autumn.start == timedelta(hours=25)


def test_rolling_days_are_today_and_the_days_before() -> None:
    p = period_bounds("30d", at(2026, 3, 30, 12), BERLIN)
    assert (p.first_day, p.last_day) == (date(2026, 3, 1), date(2026, 3, 30))
    assert p.rolling and p.end == at(2026, 3, 30, 22)
    one = period_bounds("1d", at(2026, 3, 30, 12), "UTC")
    assert one.first_day == one.last_day == date(2026, 3, 30)
    with pytest.raises(ValueError, match="unknown budget period 'fortnight'"):
        period_bounds("fortnight", at(2026, 1, 1), "UTC")


def test_each_period_reads_as_words() -> None:
    now = at(2026, 12, 2, 12)
    words = {
        p: period_label(period_bounds(p, now, "UTC"))
        for p in ("day", "week", "month", "quarter", "year", "30d", "1d")
    }
    assert words == {
        "day": "for 2 December",
        "week": "for the week of 30 November",
        "month": "for December",
        "quarter": "for Q4 2026",
        "year": "for 2026",
        "30d": "in the last 30 days",
        "1d": "for today",
    }


# -- what people are told -------------------------------------------------------------------


def test_the_reason_names_the_spending_the_period_and_whom_to_ask() -> None:
    december = period_bounds("month", at(2026, 12, 2), "UTC")
    assert money(1_000_000_000, "credits") == "1,000.00 credits"
    assert spent_text("lab-a", 1_000_000_000, 1_000_000_000, december, "credits", ["alice"]) == (
        "lab-a has spent 1,000.00 of its 1,000.00 credits for December; "
        "ask alice (manager) to raise it"
    )
    assert spent_text(
        "lab-a",
        1_200_000_000,
        1_000_000_000,
        december,
        "EUR",
        ["alice", "bob", "carol"],
        pool="gpu",
        overdraft=200_000_000,
    ) == (
        "lab-a has spent 1,200.00 of its 1,000.00 EUR on pool 'gpu' for December (and its "
        "overdraft of 200.00 EUR); ask alice, bob or carol (managers) to raise it"
    )
    assert ask_text([]) == "ask an administrator to raise it"


def test_the_reason_for_a_workload_that_would_overspend() -> None:
    assert beyond_text(5.0, 3.0, 7.0, 0.0, "EUR", "of lab's budget for December") == (
        "its cost up to its maximum runtime (5.00 EUR), with the 3.00 EUR that running "
        "workloads may still spend, would go beyond the 7.00 EUR left of lab's budget for "
        "December"
    )
    assert beyond_text(5.0, 0.0, 2.0, 1.0, "EUR", "of lab's budget") == (
        "its cost up to its maximum runtime (5.00 EUR) would go beyond the 2.00 EUR left of "
        "lab's budget (which includes an overdraft of 1.00 EUR)"
    )


def status(**kw: object) -> BudgetStatus:
    base = BudgetStatus(
        id=1,
        account="lab",
        pool=None,
        amount=100_000_000,
        period=period_bounds("month", at(2026, 12, 2), "UTC"),
        spent=0,
        hard_stop=True,
        grace=900.0,
        step_down=None,
        overdraft=0,
        alerts=(0.5, 0.8, 0.9),
        origin="policy",
        currency="credits",
        managers=("alice",),
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def test_thresholds_are_crossed_at_exactly_their_fraction() -> None:
    assert crossed(status(spent=49_999_999)) == []
    assert crossed(status(spent=50_000_000)) == [0.5]
    assert crossed(status(spent=100_000_000)) == [0.5, 0.8, 0.9, 1.0]
    over = status(spent=110_000_000, overdraft=20_000_000)
    assert stop_threshold(over) == 1.2 and crossed(over) == [0.5, 0.8, 0.9, 1.0]
    assert not over.blocked and over.remaining == 10_000_000 and over.left == -10_000_000
    spent = replace(over, spent=120_000_000)
    assert crossed(spent)[-1] == 1.2 and spent.blocked
    soft = status(spent=200_000_000, hard_stop=False, overdraft=5)
    assert crossed(soft) == [0.5, 0.8, 0.9, 1.0] and not soft.blocked


def test_a_status_says_what_is_spent_and_held() -> None:
    s = status(spent=100_000_000, pool="gpu")
    assert s.fraction == 1.0 and s.blocked
    assert s.hold_reason == (
        "lab has spent 100.00 of its 100.00 credits on pool 'gpu' for December; "
        "ask alice (manager) to raise it"
    )
    assert s.name == "of lab's budget on pool 'gpu' for December"
    nothing = status(amount=0)
    assert nothing.fraction == 1.0 and nothing.blocked and stop_threshold(nothing) == 1.0


# -- the admission rule ---------------------------------------------------------------------

#: One CPU-hour costs 1.0 on pool p (memory is free).
RATES = {"p": Rates(cpu=1.0)}


def limit(left: float, account: str = "a", pool: str | None = None, **kw: object) -> BudgetLimit:
    return BudgetLimit(
        account,
        pool,
        left,
        reason=f"{account} has spent it",
        name=f"of {account}'s budget",
        ask="ask alice (manager) to raise it",
        **kw,  # type: ignore[arg-type]
    )


def test_a_spent_budget_holds_with_its_reason_and_no_expected_start() -> None:
    s = snap([job(1, wall=3600)], budgets=[limit(0.0)], rates=RATES)
    assert schedule(s) == [Hold(1, "a has spent it", 1, None)]


def test_cost_up_to_the_walltime_with_what_runs_must_fit_what_is_left() -> None:
    # 10 left; one running CPU may still spend 2 (ends in 2 h); each new one costs 3 (3 h).
    s = snap(
        [job(1, wall=3 * 3600, at=1), job(2, wall=3 * 3600, at=2), job(3, "b", wall=10**6, at=3)],
        [run(9, end=2 * 3600)],
        budgets=[limit(10.0)],
        rates=RATES,
        policy="easy",
    )
    out = schedule(s)
    # 2 + 3 = 5 ≤ 10, then 2 + 3 + 3 = 8 ≤ 10: both admitted.
    assert out[:2] == [Admit(1, "n1"), Admit(2, "n1")]
    assert out[2] == Admit(3, "n1")  # account b has no budget
    tight = replace(s, budgets=[limit(7.0)])
    out = schedule(tight)
    assert out[0] == Admit(1, "n1")
    assert out[-1] == Hold(
        2,
        "its cost up to its maximum runtime (3.00 credits), with the 5.00 credits that "
        "running workloads may still spend, would go beyond the 7.00 credits left of a's "
        "budget; ask alice (manager) to raise it",
        1,
        None,
    )


def test_a_budget_covers_its_subtree_and_only_its_pool() -> None:
    accounts = {p: AccountState(p) for p in ("inst", "inst/lab", "other")}
    s = snap(
        [
            job(1, "inst/lab", wall=3600),
            job(2, "inst/lab", wall=3600, pool="q"),
            job(3, "other", wall=3600),
        ],
        accounts=accounts,
        budgets=[limit(0.0, "inst", "p")],
        rates=RATES,
    )
    out = schedule(s)
    assert Hold(1, "inst has spent it", 1, None) in out
    assert Admit(3, "n1") in out
    # Pool q has no nodes: rejected, whatever the budget (q's budget is not p's).
    assert not any(isinstance(d, Hold) and d.workload == 2 for d in out)


def test_free_work_and_unpriced_pools_are_never_held() -> None:
    s = snap([job(1, wall=3600)], budgets=[limit(0.0 + 1e-9)])
    assert schedule(s) == [Admit(1, "n1")]
    assert not over_budget(0.0, 5.0, 1.0)


def test_a_stepped_down_workload_is_preempted_like_a_borrower() -> None:
    accounts = {
        "a": AccountState("a", allocations={"p": Allocation(quota=cpus(4, 16))}),
        "b": AccountState("b", allocations={"p": Allocation(quota=cpus(4, 16))}),
    }
    # b runs within its own guarantee, so it is no borrower; but stepped down, it is a victim.
    runs = [run(1, "b", "v", cpus(4)), run(2, "b", "v", cpus(0))]
    s = snap([job(9, "a", "u", cpus(2))], runs, accounts=accounts, policy="easy")
    assert not any(isinstance(d, Preempt) for d in schedule(s))
    stepped = replace(s, running=[replace(runs[0], preemptible=True), runs[1]])
    assert schedule(stepped)[0] == Preempt(
        1, 9, 300.0, "preempted: account a needs its guaranteed resources back"
    )


@st.composite
def budgeted(draw: st.DrawFn) -> tuple[object, float]:
    left = draw(st.floats(0.0, 20.0))
    waiting = [
        job(
            i,
            draw(st.sampled_from(["a", "a/x", "b"])),
            r=cpus(draw(st.integers(1, 2))),
            at=i,
            wall=draw(st.integers(600, 6 * 3600)),
        )
        for i in range(1, draw(st.integers(1, 8)))
    ]
    runs = [
        run(
            100 + i,
            draw(st.sampled_from(["a", "a/x", "b"])),
            end=draw(st.integers(0, 4 * 3600)),
            node=f"n{draw(st.integers(1, 2))}",
        )
        for i in range(draw(st.integers(0, 3)))
    ]
    accounts = {p: AccountState(p) for p in ("a", "a/x", "b")}
    s = snap(
        waiting,
        runs,
        nodes=2,
        size=cpus(8, 64),
        accounts=accounts,
        budgets=[limit(left, "a")],
        rates=RATES,
    )
    return s, left


@settings(max_examples=300, deadline=None)
@given(budgeted())
def test_what_is_admitted_never_commits_more_than_is_left(case: tuple[object, float]) -> None:
    s, left = case
    out = schedule(s)  # type: ignore[arg-type]
    admitted = {d.workload for d in out if isinstance(d, Admit)}
    in_a = [p for p in s.pending if p.account.startswith("a")]  # type: ignore[attr-defined]
    costs = sum(p.resources.cpus * p.walltime / 3600 for p in in_a if p.id in admitted)
    still = sum(
        r.resources.cpus * max(r.expected_end, 0) / 3600
        for r in s.running  # type: ignore[attr-defined]
        if r.account.startswith("a")
    )
    assert not admitted & {p.id for p in in_a} or costs + still <= left + 1e-9
    # Whatever a budget holds says so, and carries no expected start.
    for d in out:
        if isinstance(d, Hold) and ("left of a's budget" in d.reason or "spent" in d.reason):
            assert d.eta is None
    # A budget that cannot run out decides nothing: the same decisions as none at all.
    endless = replace(s, budgets=[limit(float("inf"), "a")])  # type: ignore[type-var]
    assert schedule(endless) == schedule(replace(s, budgets=[]))  # type: ignore[type-var]


# -- the policy check -----------------------------------------------------------------------

STEP = """\
accounts:
  lab: {budget: {amount: 10, step_down: cheep}}
pools:
  ws: {nodes: [{name: n1, cpus: 8, memory: 32G}]}
  gpu: {nodes: [{name: g1, cpus: 8, memory: 32G}]}
profiles:
  cheap: {pool: gpu, size: {cpus: 1, memory: 1G}}
allocations:
  - account: lab
    pool: ws
    budget: {amount: 5, step_down: cheap}
"""


def test_step_down_must_name_a_profile_of_the_budgets_pool() -> None:
    from tests.unit.test_config import problems

    assert problems(STEP) == [
        (
            2,
            "accounts.lab.budget.step_down",
            "unknown profile 'cheep' to step down to",
            "did you mean 'cheap'?; define it under `profiles:` (a low-priority one), or leave "
            "`step_down` out to stop work instead.",
        ),
        (
            11,
            "allocations[0].budget.step_down",
            "profile 'cheap' runs on pool 'gpu', not on this budget's pool 'ws'",
            "running work steps down within its pool: name a profile of pool 'ws'.",
        ),
    ]
