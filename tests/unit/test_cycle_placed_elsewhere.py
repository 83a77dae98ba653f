"""Pools whose backend places work itself (Slurm): admitted on policy alone, never on a node."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from allotment.domain.costs import Rates
from allotment.scheduler import schedule
from allotment.scheduler.decisions import Admit, Hold, Reject
from allotment.scheduler.snapshot import AccountState, Allocation, BudgetLimit, Limits
from tests.support.builders import cpus, pending, running, snapshot

ELSEWHERE = frozenset({"p"})


def test_work_beyond_the_nodes_is_admitted_without_a_node() -> None:
    queue = [pending(i) for i in range(10)]  # 10 CPUs on one node of 4
    out = schedule(snapshot(queue, placed_elsewhere=ELSEWHERE))
    assert out == [Admit(i, "") for i in range(10)]
    # The same queue where Allotment places the work: four run, six wait.
    here = schedule(snapshot(queue))
    assert sum(isinstance(d, Admit) for d in here) == 4


def test_limits_and_borrowing_caps_still_hold() -> None:
    accounts = {
        "a": AccountState(
            "a", allocations={"p": Allocation(cpus(2, 16), borrowing_limit=cpus(1, 16))}
        ),
        "b": AccountState("b", limits=Limits(workloads=2)),
    }
    queue = [pending(i, "a") for i in range(5)] + [pending(10 + i, "b", "v") for i in range(3)]
    out = schedule(snapshot(queue, accounts=accounts, placed_elsewhere=ELSEWHERE))
    admitted = {d.workload for d in out if isinstance(d, Admit)}
    assert admitted == {0, 1, 2, 10, 11}
    held = {d.workload: d.reason for d in out if isinstance(d, Hold)}
    assert "beyond its quota and borrowing limit" in held[3]
    assert "is using" in held[12]


def test_a_spent_budget_holds_work_there_too() -> None:
    budget = BudgetLimit("a", None, left=0.0, reason="a has spent its budget")
    out = schedule(
        snapshot(
            [pending(1)],
            placed_elsewhere=ELSEWHERE,
            budgets=[budget],
            rates={"p": Rates(cpu=1.0)},
        )
    )
    assert isinstance(out[0], Hold) and "spent" in out[0].reason


def test_a_job_spans_nodes_each_of_which_must_fit_its_share() -> None:
    fits = pending(1, r=cpus(8, 8), nodes=2)  # 4 CPUs on each of two 4-CPU nodes
    too_big = pending(2, r=cpus(10, 8), nodes=2)  # 5 on each
    too_many = pending(3, r=cpus(3, 3), nodes=3)
    out = schedule(snapshot([fits, too_big, too_many], nodes=2, placed_elsewhere=ELSEWHERE))
    assert out[0] == Admit(1, "")
    assert isinstance(out[1], Reject) and "on each of 2 nodes" in out[1].reason
    assert isinstance(out[2], Reject) and "3 nodes; pool 'p' has 2" in out[2].reason


@given(
    st.lists(st.integers(1, 6), min_size=1, max_size=30),
    st.integers(0, 8),
    st.integers(1, 40),
)
def test_admitted_work_never_exceeds_the_users_limit(
    sizes: list[int], busy: int, limit: int
) -> None:
    run = [running(100 + i) for i in range(busy)]
    queue = [pending(i, r=cpus(n)) for i, n in enumerate(sizes)]
    out = schedule(
        snapshot(
            queue,
            run,
            nodes=2,
            placed_elsewhere=ELSEWHERE,
            default_limits=Limits(cpus=limit),
        )
    )
    admitted = [d.workload for d in out if isinstance(d, Admit)]
    assert all(d.node == "" for d in out if isinstance(d, Admit))
    assert busy + sum(sizes[i] for i in admitted) <= max(limit, busy)
    assert {d.workload for d in out} == set(range(len(sizes)))


def test_what_is_admitted_counts_against_the_budget_of_the_next() -> None:
    # One CPU for 100 s costs 100/3600 at 1 an hour: room for one and a half.
    budget = BudgetLimit("a", None, left=1.5 * 100 / 3600, reason="a has spent its budget")
    out = schedule(
        snapshot(
            [pending(1), pending(2)],
            placed_elsewhere=ELSEWHERE,
            budgets=[budget],
            rates={"p": Rates(cpu=1.0)},
        )
    )
    assert out[0] == Admit(1, "")
    assert isinstance(out[1], Hold)
