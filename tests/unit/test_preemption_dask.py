"""Preemption order: borrowed Dask workers are stopped before any session or job (Dask moves
their data and the cluster asks for another worker; a session or a job loses its work)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from allotment.domain.resources import Resources
from allotment.scheduler import AccountState, Allocation, Hold, Preempt, Running, Snapshot, schedule
from tests.support.builders import cpus
from tests.support.builders import pending as job
from tests.support.builders import running as run
from tests.support.builders import snapshot as snap

WORKER = "dask-worker"
REASON = "preempted: account a needs its guaranteed resources back"
WAIT = "waiting for borrowed resources to be returned (preemption under way)"

#: a is guaranteed a whole node; b borrows everything it runs.
ACCOUNTS = {
    "a": AccountState("a", allocations={"p": Allocation(quota=cpus(4, 16))}),
    "b": AccountState("b"),
}


def test_a_dask_worker_goes_before_a_job_of_lower_priority() -> None:
    s = snap(
        [job(9, "a", "u", cpus(1))],
        [
            run(1, "b", "v", cpus(2), priority=0),
            run(2, "b", "v", cpus(2), priority=5, kind=WORKER),
        ],
        accounts=ACCOUNTS,
        policy="easy",
    )
    assert schedule(s) == [Preempt(2, 9, 300.0, REASON), Hold(9, WAIT, 1, 100)]


def test_a_node_freed_by_dask_workers_alone_is_chosen_first() -> None:
    # n1 comes first and its job alone would make room; n2's two workers make it too.
    s = snap(
        [job(9, "a", "u", cpus(2))],
        [
            run(1, "b", "v", cpus(4), node="n1"),
            run(2, "b", "v", cpus(2), node="n2", kind=WORKER),
            run(3, "b", "v", cpus(1), node="n2", kind=WORKER),
            run(4, "b", "v", cpus(1), node="n2", kind="session"),
        ],
        nodes=2,
        accounts=ACCOUNTS,
        policy="easy",
    )
    assert [d for d in schedule(s) if isinstance(d, Preempt)] == [Preempt(2, 9, 300.0, REASON)]


def test_other_work_goes_only_after_every_dask_worker_of_the_node() -> None:
    s = snap(
        [job(9, "a", "u", cpus(3))],
        [
            run(1, "b", "v", cpus(2), priority=0),
            run(2, "b", "v", cpus(1), priority=7, kind=WORKER),
            run(3, "b", "v", cpus(1), priority=9, kind=WORKER),
        ],
        accounts=ACCOUNTS,
        policy="easy",
    )
    victims = [d.victim for d in schedule(s) if isinstance(d, Preempt)]
    assert victims == [2, 3, 1]


def test_without_dask_workers_the_order_is_by_priority() -> None:
    s = snap(
        [job(9, "a", "u", cpus(1))],
        [run(1, "b", "v", cpus(2), priority=5), run(2, "b", "v", cpus(2), priority=1)],
        accounts=ACCOUNTS,
        policy="easy",
    )
    assert [d.victim for d in schedule(s) if isinstance(d, Preempt)] == [2]


def test_a_dask_worker_within_its_own_guarantee_is_not_a_victim() -> None:
    accounts = {**ACCOUNTS, "b": AccountState("b", allocations={"p": Allocation(cpus(2, 16))})}
    s = snap(
        [job(9, "a", "u", cpus(2))],
        [run(1, "b", "v", cpus(2), kind=WORKER), run(2, "c", "w", cpus(2))],
        accounts={**accounts, "c": AccountState("c")},
        policy="easy",
    )
    assert [d.victim for d in schedule(s) if isinstance(d, Preempt)] == [2]


_RUNNING = st.lists(
    st.tuples(
        st.integers(1, 2),  # CPUs
        st.sampled_from(["n1", "n2"]),
        st.sampled_from([WORKER, "job", "session"]),
        st.integers(0, 3),  # priority
    ),
    max_size=8,
)


def _fill(items: list[tuple[int, str, str, int]]) -> list[Running]:
    """b's borrowed workloads, each where it fits (4 CPUs a node)."""
    used = {"n1": 0, "n2": 0}
    out = []
    for i, (c, node, kind, prio) in enumerate(items, start=1):
        if used[node] + c <= 4:
            used[node] += c
            out.append(run(i, "b", "v", cpus(c), node=node, kind=kind, priority=prio))
    return out


def _frees(s: Snapshot, node: str, victims: list[Running], need: Resources) -> bool:
    used = sum(r.resources.millicpus for r in s.running if r.node == node)
    freed = sum(r.resources.millicpus for r in victims)
    return 4000 - used + freed >= need.millicpus


@settings(max_examples=300, deadline=None)
@given(_RUNNING, st.integers(1, 4))
def test_dask_workers_are_always_the_first_victims(
    items: list[tuple[int, str, str, int]], need: int
) -> None:
    s = snap(
        [job(99, "a", "u", cpus(need, 1))],
        _fill(items),
        nodes=2,
        accounts=ACCOUNTS,
        policy="easy",
    )
    victims = {d.victim for d in schedule(s) if isinstance(d, Preempt)}
    chosen = [r for r in s.running if r.id in victims]
    workers = {n: [r for r in s.running if r.node == n and r.kind == WORKER] for n in ("n1", "n2")}
    if any(_frees(s, n, ws, cpus(need, 1)) for n, ws in workers.items()):
        # Some node's Dask workers alone make room (or it fits already): nothing else stops.
        assert all(r.kind == WORKER for r in chosen)
    elif any(r.kind != WORKER for r in chosen):
        # Something else had to go: every Dask worker of that node goes too.
        node = chosen[0].node
        assert all(r.id in victims for r in workers[node])
    assert len({r.node for r in chosen}) <= 1
