"""The scheduler, pure: exact decision lists for hand-worked cases, and properties."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allotment.domain.resources import Resources
from allotment.scheduler import (
    AccountState,
    Admit,
    Allocation,
    Hold,
    Limits,
    NodeState,
    Pending,
    Preempt,
    Reject,
    Running,
    Snapshot,
    cycle,
    order_queue,
    schedule,
)
from allotment.scheduler.cycle import _Cycle
from allotment.scheduler.fairshare import fair_share_factors, level_fs
from allotment.scheduler.projection import project
from allotment.scheduler.usage import decay_factor, dominant_share, subtract
from tests.support.builders import G, cpus
from tests.support.builders import pending as job
from tests.support.builders import running as run
from tests.support.builders import snapshot as snap


def test_easy_backfills_what_ends_before_the_reservation() -> None:
    s = snap(
        [
            job(2, r=cpus(4), at=1, wall=50),
            job(3, "b", "v", cpus(2), at=2, wall=50),
            job(4, "b", "v", cpus(2), at=3, wall=200),
        ],
        [run(1, r=cpus(2), end=100)],
        policy="easy",
    )
    assert schedule(s) == [
        Admit(3, "n1"),
        Hold(2, "waiting for 4 CPUs, 1G to free up (next in line)", 1, 100),
        Hold(4, "waiting for 2 CPUs, 1G to free up", 2, 150),
    ]


def test_fifo_never_jumps_the_queue() -> None:
    s = snap(
        [job(2, r=cpus(4), at=1, wall=50), job(3, "b", "v", cpus(2), at=2, wall=50)],
        [run(1, r=cpus(2), end=100)],
        policy="fifo",
    )
    assert schedule(s) == [
        Hold(2, "waiting for 4 CPUs, 1G to free up (next in line)", 1, 100),
        Hold(3, "waiting for the workloads ahead of it (fifo)", 2, 150),
    ]


def test_backfill_may_use_what_the_reservation_leaves() -> None:
    # The head needs 3 of 4 CPUs at t=100; a long 1-CPU job fits in the fourth.
    s = snap(
        [
            job(2, r=cpus(3), at=1),
            job(3, r=cpus(1), at=2, wall=1000),
            job(4, r=cpus(1), at=3, wall=1000),
        ],
        [run(1, r=cpus(2), end=100)],
        policy="easy",
    )
    assert [d for d in schedule(s) if isinstance(d, Admit)] == [Admit(3, "n1")]


def test_what_can_never_run_is_rejected_with_what_would_fit() -> None:
    s = snap([job(1, r=cpus(8)), job(2, r=cpus(1, gpus={"a100": 1}))])
    assert schedule(s) == [
        Reject(1, "it asks for 8 CPUs, 1G; the largest node of 'p' (n1) has 4 CPUs, 16G"),
        Reject(2, "it asks for 1 CPU, 1G, 1× a100; the largest node of 'p' (n1) has 4 CPUs, 16G"),
    ]


def test_a_node_its_backend_lacks_makes_work_wait_not_fail() -> None:
    """A Slurm node drained (nothing of it to hand out now) or half there: what fits the node
    as declared waits, with a place; only what could never fit it is refused."""
    drained = NodeState("p", "n1", Resources(), declared=cpus(4, 16))
    s = replace(snap([job(1, r=cpus(2)), job(2, r=cpus(8))]), nodes=[drained])
    decisions = schedule(s)
    assert not any(isinstance(d, Admit) for d in decisions)
    assert [d.workload for d in decisions if isinstance(d, Hold)] == [1]
    assert [d for d in decisions if isinstance(d, Reject)] == [
        Reject(2, "it asks for 8 CPUs, 1G; the largest node of 'p' (n1) has 4 CPUs, 16G")
    ]
    half = NodeState("p", "n1", cpus(2, 16), declared=cpus(4, 16))
    s = replace(snap([job(1, r=cpus(2)), job(3, r=cpus(4))]), nodes=[half])
    decisions = schedule(s)
    assert [d for d in decisions if isinstance(d, Admit)] == [Admit(1, "n1")]
    assert [d.workload for d in decisions if isinstance(d, Hold)] == [3]


def test_limits_user_beats_account_and_the_lowest_account_wins() -> None:
    accounts = {
        "x": AccountState("x", limits=Limits(cpus=3)),
        "x/y": AccountState("x/y", limits=Limits(cpus=2)),
    }
    s = snap(
        [
            job(1, "x/y", "u"),
            job(2, "x/y", "u"),
            job(3, "x/y", "u"),
            job(4, "x/y", "boss"),
            job(5, "x/y", "boss"),
            job(6, "x", "v"),
            job(7, "x", "v"),
            job(8, "x", "v"),
            job(9, "x", "v"),
        ],
        nodes=3,
        accounts=accounts,
        user_limits={"boss": Limits(cpus=4)},
        policy="easy",
    )
    out = schedule(s)
    assert [d.workload for d in out if isinstance(d, Admit)] == [1, 2, 4, 5, 6, 7, 8]
    held = {d.workload: d.reason for d in out if isinstance(d, Hold)}
    assert held == {
        3: "u is using 2 of its 2 CPUs",  # x/y's 2 is lower than x's 3
        9: "v is using 3 of its 3 CPUs",
    }


def test_a_guaranteed_account_preempts_a_borrower() -> None:
    accounts = {
        "a": AccountState("a", allocations={"p": Allocation(quota=cpus(4, 16))}),
        "b": AccountState("b"),
    }
    s = snap(
        [job(9, "a", "u", cpus(2))],
        [run(1, "b", "v", cpus(2), priority=5), run(2, "b", "v", cpus(2), priority=1)],
        accounts=accounts,
        policy="easy",
    )
    out = schedule(s)
    assert out[0] == Preempt(
        2, 9, 300.0, "preempted: account a needs its guaranteed resources back"
    )
    assert out[1] == Hold(
        9, "waiting for borrowed resources to be returned (preemption under way)", 1, 100
    )
    assert len(out) == 2


def test_no_preemption_beyond_the_guarantee_or_of_the_guaranteed() -> None:
    accounts = {
        "a": AccountState("a", allocations={"p": Allocation(quota=cpus(2, 16))}),
        "b": AccountState("b", allocations={"p": Allocation(quota=cpus(2, 16))}),
    }
    # a asks beyond its quota: it may only borrow idle capacity, never preempt.
    s = snap(
        [job(9, "a", "u", cpus(3))], [run(1, "b", "v", cpus(2))], accounts=accounts, policy="easy"
    )
    assert not any(isinstance(d, Preempt) for d in schedule(s))
    # b runs within its own quota: it is not a borrower and is never preempted.
    s = snap(
        [job(9, "a", "u", cpus(2))],
        [run(1, "b", "v", cpus(2)), run(2, "a", "u", cpus(2))],
        accounts=accounts,
        policy="easy",
    )
    assert not any(isinstance(d, Preempt) for d in schedule(s))


def test_borrowing_limit_holds_with_a_reason() -> None:
    accounts = {
        "a": AccountState(
            "a", allocations={"p": Allocation(quota=cpus(1, 1), borrowing_limit=cpus(1, 1))}
        )
    }
    s = snap(
        [job(1, r=cpus(1)), job(2, r=cpus(1)), job(3, r=cpus(1))], accounts=accounts, policy="easy"
    )
    out = schedule(s)
    assert [d.workload for d in out if isinstance(d, Admit)] == [1, 2]
    assert "beyond its quota and borrowing limit" in next(
        d.reason for d in out if isinstance(d, Hold)
    )


def test_fair_share_puts_the_light_lab_first() -> None:
    accounts = {p: AccountState(p) for p in ("phys", "phys/a", "phys/b")}
    s = snap(
        [job(1, "phys/a", "heavy", cpus(4), at=0), job(2, "phys/b", "light", cpus(4), at=5)],
        accounts=accounts,
        usage={("phys/a", "heavy"): 100.0},
    )
    assert schedule(s)[0] == Admit(2, "n1")


def test_fair_tree_keeps_labs_apart() -> None:
    shares = {"i": 1.0, "i/a": 1.0, "i/b": 1.0}
    usage = {("i/a", "a1"): 10.0, ("i/a", "a2"): 0.0, ("i/b", "b1"): 15.0, ("i/b", "b2"): 30.0}
    f = fair_share_factors(shares, usage)
    # Lab a used less than lab b, so even its heavy user outranks lab b's light one.
    assert min(f[("i/a", "a1")], f[("i/a", "a2")]) > max(f[("i/b", "b1")], f[("i/b", "b2")])
    assert f[("i/a", "a2")] > f[("i/a", "a1")]


def test_whole_node_waits_for_an_empty_node() -> None:
    s = snap(
        [job(2, r=cpus(1), whole_node=True)], [run(1, r=cpus(1), end=50)], nodes=2, policy="easy"
    )
    assert schedule(s) == [Admit(2, "n2")]


# -- properties -------------------------------------------------------------------------------

sizes = st.sampled_from([cpus(1), cpus(2), cpus(3, 4), cpus(4, 8), cpus(1, 1, {"g": 1})])


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    n_nodes = draw(st.integers(1, 3))
    nodes = [NodeState("p", f"n{i}", cpus(4, 16, {"g": 2})) for i in range(n_nodes)]
    accounts = {
        "a": AccountState(
            "a", shares=draw(st.integers(1, 3)), allocations={"p": Allocation(quota=cpus(2, 8))}
        ),
        "b": AccountState("b", limits=Limits(cpus=draw(st.sampled_from([None, 3.0, 6.0])))),
    }
    running, free = [], {n.name: cpus(4, 16, {"g": 2}) for n in nodes}
    for i in range(draw(st.integers(0, 5))):
        r, node = draw(sizes), draw(st.sampled_from([n.name for n in nodes]))
        if r.fits_in(free[node]):
            free[node] = Resources(
                free[node].millicpus - r.millicpus,
                free[node].memory - r.memory,
                {m: free[node].gpus.get(m, 0) - r.gpus.get(m, 0) for m in free[node].gpus},
            )
            running.append(
                Running(
                    100 + i,
                    draw(st.sampled_from(["u", "v"])),
                    draw(st.sampled_from(["a", "b"])),
                    "p",
                    node,
                    r,
                    0,
                    draw(st.integers(1, 500)),
                    priority=i,
                )
            )
    pending = [
        Pending(
            i,
            draw(st.sampled_from(["u", "v", "w"])),
            draw(st.sampled_from(["a", "b"])),
            "p",
            draw(sizes),
            draw(st.integers(0, 50)),
            draw(st.integers(1, 500)),
        )
        for i in range(draw(st.integers(0, 12)))
    ]
    return Snapshot(
        now=60,
        accounts=accounts,
        nodes=nodes,
        running=running,
        pending=pending,
        usage={("a", "u"): draw(st.floats(0, 10)), ("b", "v"): draw(st.floats(0, 10))},
        user_limits={"w": Limits(cpus=2)},
        policy=draw(st.sampled_from(["fifo", "easy", "fairshare"])),
    )


@settings(max_examples=300, deadline=None)
@given(snapshots())
def test_capacity_and_limits_are_never_exceeded(s: Snapshot) -> None:
    out = schedule(s)
    assert out == schedule(s)  # the same snapshot always gives the same decisions
    decided = [d.workload for d in out if not isinstance(d, Preempt)]
    assert sorted(decided) == sorted(p.id for p in s.pending)  # one decision each
    by_id = {p.id: p for p in s.pending}
    use = {n.name: Resources() for n in s.nodes}
    for r in s.running:
        use[r.node] = use[r.node] + r.resources
    for d in out:
        if isinstance(d, Admit):
            p = by_id[d.workload]
            use[d.node] = use[d.node] + p.resources
    for n in s.nodes:
        assert use[n.name].fits_in(n.capacity)
    # A user's limit binds: w has their own (2 CPUs); u and v charging b are bound by b's.
    for user in ("u", "v", "w"):
        new = [
            by_id[d.workload]
            for d in out
            if isinstance(d, Admit) and by_id[d.workload].user == user
        ]
        if not new:
            continue
        total = sum(p.resources.cpus for p in new) + sum(
            r.resources.cpus for r in s.running if r.user == user
        )
        b_limit = s.accounts["b"].limits.cpus if s.accounts["b"].limits else None
        limit = 2.0 if user == "w" else (b_limit if all(p.account == "b" for p in new) else None)
        if limit is not None:
            assert total <= limit or total - new[-1].resources.cpus < limit


def _started(s: Snapshot, admitted: list[Pending], nodes: dict[int, str]) -> list[Running]:
    return [
        *s.running,
        *(
            Running(
                p.id, p.user, p.account, p.pool, nodes[p.id], p.resources, s.now, s.now + p.walltime
            )
            for p in admitted
        ),
    ]


@settings(max_examples=300, deadline=None)
@given(snapshots())
def test_backfill_never_delays_the_head(s: Snapshot) -> None:
    s = replace(s, policy="easy")
    out = schedule(s)
    holds = [d for d in out if isinstance(d, Hold) and d.reason.endswith("(next in line)")]
    if not holds or any(isinstance(d, Preempt) for d in out):
        return
    head = next(p for p in s.pending if p.id == holds[0].workload)
    order = [p.id for p in order_queue(s)]
    ahead = set(order[: order.index(head.id)])
    nodes = {d.workload: d.node for d in out if isinstance(d, Admit)}
    admitted = [p for p in s.pending if p.id in nodes]

    def start(running: list[Running]) -> float | None:
        alone = schedule(replace(s, running=running, pending=[head], user_limits={}))
        return next((d.eta for d in alone if isinstance(d, Hold)), s.now)

    # When the head can start, given everything admitted this cycle, versus given only what
    # was ahead of it in the queue: backfilled workloads must not push it back.
    with_backfill = start(_started(s, admitted, nodes))
    without = start(_started(s, [p for p in admitted if p.id in ahead], nodes))
    assert with_backfill is not None and without is not None
    assert with_backfill <= without


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["x", "y", "z"]), st.floats(0, 100), min_size=3),
    st.integers(1, 5),
    st.integers(1, 5),
)
def test_more_shares_never_lower_an_accounts_rank(
    use: dict[str, float], before: int, extra: int
) -> None:
    usage = {(f"r/{k}", "u"): v for k, v in use.items()}
    low = fair_share_factors({"r": 1, "r/x": before, "r/y": 2, "r/z": 3}, usage)
    high = fair_share_factors({"r": 1, "r/x": before + extra, "r/y": 2, "r/z": 3}, usage)
    assert high[("r/x", "u")] >= low[("r/x", "u")]


@settings(max_examples=300, deadline=None)
@given(snapshots())
def test_preemption_never_loops(s: Snapshot) -> None:
    out = schedule(s)
    preempts = [d for d in out if isinstance(d, Preempt)]
    if not preempts:
        return
    # Carry the preemption out: victims stop, the preemptor starts where they were.
    victims = {d.victim for d in preempts}
    winner = next(p for p in s.pending if p.id == preempts[0].for_workload)
    node = next(r.node for r in s.running if r.id in victims)
    running = [r for r in s.running if r.id not in victims]
    running.append(
        Running(
            winner.id,
            winner.user,
            winner.account,
            "p",
            node,
            winner.resources,
            60,
            60 + winner.walltime,
        )
    )
    losers = [
        Pending(1000 + r.id, r.user, r.account, "p", r.resources, 60, 100)
        for r in s.running
        if r.id in victims
    ]
    again = schedule(replace(s, running=running, pending=losers))
    assert winner.id not in {d.victim for d in again if isinstance(d, Preempt)}


def test_backfill_goes_to_a_node_that_does_not_delay_the_head() -> None:
    # n1 is the tighter fit for job 3 but holds the head's reservation; n2 has room to spare.
    s = snap(
        [job(2, r=cpus(4), at=1), job(3, r=cpus(1), at=2, wall=1000)],
        [run(1, r=cpus(2), end=100, node="n1"), run(9, r=cpus(1), end=500, node="n2")],
        nodes=2,
        policy="easy",
    )
    assert [d for d in schedule(s) if isinstance(d, Admit)] == [Admit(3, "n2")]


# -- edges of the cycle, one reason each ---------------------------------------------------


def test_a_pool_or_an_account_that_does_not_exist_is_rejected() -> None:
    s = snap([job(1, pool="gpu"), job(2, "nowhere")])
    assert schedule(s) == [
        Reject(1, "pool 'gpu' does not exist or has no nodes"),
        Reject(2, "account 'nowhere' does not exist"),
    ]


def test_each_kind_of_limit_holds_with_its_own_reason() -> None:
    a100 = {"a100": 1}
    s = snap(
        [
            job(1, user="many"),
            job(2, user="fat", r=cpus(1, 2)),
            job(3, user="gpu", r=cpus(1, 1, a100)),
        ],
        [
            run(11, user="many"),
            run(12, user="fat", r=cpus(1, 2)),
            run(13, user="gpu", r=cpus(1, 1, a100)),
        ],
        nodes=2,
        size=cpus(8, 64, {"a100": 4}),
        user_limits={
            "many": Limits(workloads=1),
            "fat": Limits(memory=3 * G),
            "gpu": Limits(gpus=1),
        },
        policy="easy",
    )
    assert schedule(s) == [
        Hold(1, "many is using 1 of its 1 workloads", 1, 0),
        Hold(2, "fat is using 2G of its 3G of memory", 2, 0),
        Hold(3, "gpu is using 1 of its 1 GPUs", 3, 0),
    ]


def test_a_limit_is_reached_only_beyond_it() -> None:
    # At the limit is allowed: one more workload, exactly the memory, exactly the GPUs.
    s = snap(
        [job(1, user="many"), job(2, user="fat", r=cpus(1, 1)), job(3, r=cpus(1, 1, {"a": 1}))],
        [run(11, user="many"), run(12, user="fat", r=cpus(1, 2))],
        size=cpus(8, 64, {"a": 1}),
        user_limits={
            "many": Limits(workloads=2),
            "fat": Limits(memory=3 * G),
            "u": Limits(gpus=1),
        },
        policy="easy",
    )
    assert schedule(s) == [Admit(1, "n1"), Admit(2, "n1"), Admit(3, "n1")]


def test_the_reservation_goes_to_a_node_the_head_fits() -> None:
    # n1 is idle but too small for the head; n2 frees up at 100.
    s = Snapshot(
        now=0,
        accounts={"a": AccountState("a")},
        nodes=[NodeState("p", "n1", cpus(2, 16)), NodeState("p", "n2", cpus(4, 16))],
        running=[run(1, r=cpus(2), end=100, node="n2")],
        pending=[job(2, r=cpus(4)), job(3, r=cpus(1), wall=500)],
        policy="easy",
    )
    # Job 3 goes to n1, where it does not delay the head.
    assert schedule(s) == [
        Admit(3, "n1"),
        Hold(2, "waiting for 4 CPUs, 1G to free up (next in line)", 1, 100),
    ]


def test_backfill_never_delays_a_whole_node_head() -> None:
    """Review finding: the head wants n1 whole once job 1 ends (t=100). Job 3 would run there
    until 505, so backfilled it would keep the node from being whole at 100; job 4 ends by 50
    and may. A whole-node reservation leaves nothing beside it."""
    s = snap(
        [
            job(2, r=cpus(1), whole_node=True),
            job(3, r=cpus(1), at=5, wall=500),
            job(4, r=cpus(1), at=1, wall=50),
        ],
        [run(1, r=cpus(1), end=100)],
        policy="easy",
        estimates=False,
    )
    assert schedule(s) == [
        Admit(4, "n1"),
        Hold(2, "waiting for 1 CPU, 1G to free up (next in line)", 1, None),
        Hold(3, "waiting for 1 CPU, 1G to free up", 2, None),
    ]


def test_a_node_whose_gpus_left_the_policy_is_whole_again_when_its_work_ends() -> None:
    # The job on n1 holds a GPU the policy no longer lists for n1. Once it ends the node is
    # empty, though its free GPUs read {a100: 0}: the whole-node request is reserved n1 at 100,
    # and job 3, which would still run then, does not start there.
    s = snap(
        [job(2, r=cpus(1), whole_node=True), job(3, r=cpus(1), at=5, wall=500)],
        [run(1, r=cpus(1, 1, {"a100": 1}), end=100)],
        policy="easy",
        estimates=False,
    )
    assert schedule(s) == [
        Hold(2, "waiting for 1 CPU, 1G to free up (next in line)", 1, None),
        Hold(3, "waiting for 1 CPU, 1G to free up", 2, None),
    ]


def test_earliest_is_now_when_the_request_fits_now() -> None:
    # The cycle asks only after finding no node with room, so through ``schedule`` the first
    # answer (now) is never given; the method still answers correctly on its own.
    s = snap([], [run(1, r=cpus(2), end=100)])
    c = _Cycle(s)
    n1 = c.by_name[("p", "n1")]
    assert c.earliest(job(9, r=cpus(2)), n1) == (0, cpus(2, 15))
    assert c.earliest(job(9, r=cpus(3)), n1) == (100, cpus(4, 16))
    assert c.earliest(job(9, r=cpus(1), whole_node=True), n1) == (100, cpus(4, 16))


def test_replay_skips_a_full_pool_and_goes_on_with_the_others() -> None:
    s = Snapshot(
        now=0,
        accounts={"a": AccountState("a")},
        nodes=[NodeState("p", "n1", cpus(4, 16)), NodeState("q", "m1", cpus(4, 16))],
        running=[run(1, r=cpus(2), end=100)],
        pending=[
            job(2, r=cpus(4), at=1),
            job(3, r=cpus(1), at=2),  # would fit, but fifo: p is blocked behind job 2
            job(4, r=cpus(1), at=3, pool="q"),
        ],
        policy="fifo",
        explain=False,  # replay: only what starts, no Hold
    )
    assert schedule(s) == [Admit(4, "m1")]


def test_descriptions_are_remembered_within_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    full = {(i, 0, ()): "x" for i in range(10_001)}
    monkeypatch.setattr(cycle, "_DESCRIBED", full)
    assert cycle._describe(cpus(2, 3)) == "2 CPUs, 3G"
    assert full == {(2000, 3 * G, ()): "2 CPUs, 3G"}  # emptied, then this one kept
    assert cycle._describe(cpus(2, 3)) == "2 CPUs, 3G"
    assert len(full) == 1


def test_precomputed_fair_share_factors_order_the_queue() -> None:
    # Usage says b is the heavy one; the factors computed earlier say otherwise, and win.
    s = snap(
        [job(1, "a", "u", at=0), job(2, "b", "v", at=5)],
        usage={("b", "v"): 100.0},
        fair_share={("a", "u"): 0.1, ("b", "v"): 0.9},
    )
    assert [p.id for p in order_queue(s)] == [2, 1]
    assert [p.id for p in order_queue(replace(s, fair_share=None))] == [1, 2]


# -- projection and usage ------------------------------------------------------------------


def test_a_workload_that_never_ends_leaves_no_expected_start_behind_it() -> None:
    @dataclass(eq=False)
    class Node:
        spec: NodeState
        free: Resources
        releases: list[tuple[float, Resources]] = field(default_factory=list)

    n1 = Node(NodeState("p", "n1", cpus(4, 16)), cpus(4, 16))
    forever = job(1, r=cpus(4), wall=float("inf"))
    assert project([forever, job(2), job(3, r=cpus(8))], [n1], 10.0, exact=3) == [
        10.0,
        None,  # n1 is taken for good
        None,  # fits no node at all
    ]


def test_subtract_goes_per_gpu_model_and_below_zero() -> None:
    a = cpus(4, 8, {"a100": 2})
    b = cpus(1, 2, {"a100": 3, "h100": 1})
    assert subtract(a, b) == Resources(3000, 6 * G, {"a100": -1, "h100": -1})
    assert subtract(a, Resources()) == a


def test_the_dominant_share_counts_gpus_by_model() -> None:
    capacity = cpus(8, 8, {"a100": 4})
    assert dominant_share(cpus(1, 1, {"a100": 3}), capacity) == 0.75
    assert dominant_share(cpus(1, 2, {"h100": 5}), capacity) == 0.25  # no h100 here: ignored
    assert dominant_share(cpus(1, 2), Resources()) == 0.0  # a pool without capacity


def test_usage_decays_by_half_lives() -> None:
    assert decay_factor(3600, 3600) == 0.5
    assert decay_factor(7200, 3600) == 0.25
    assert decay_factor(100, 0) == 1.0  # no half-life: no decay
    assert decay_factor(0, 3600) == 1.0
    assert decay_factor(-5, 3600) == 1.0  # an end a little in the future does not grow


def test_level_fair_share() -> None:
    assert level_fs(1, 4, 1, 2) == 0.5  # a quarter of the shares, half of the use
    assert level_fs(1, 4, 0, 2) == math.inf  # no use yet: ahead of every sibling that has
    assert level_fs(0, 4, 0, 2) == 0.0  # no shares: behind every sibling that has
    assert level_fs(1, 0, 1, 2) == 0.0
    # A use too small to register beside its siblings' counts as none.
    assert 5e-324 / 1e300 == 0.0
    assert level_fs(1, 4, 5e-324, 1e300) == math.inf
    assert level_fs(0, 4, 5e-324, 1e300) == 0.0


def test_preemption_spares_its_own_guarantee_and_what_is_already_stopping() -> None:
    accounts = {
        "a": AccountState("a", allocations={"p": Allocation(quota=cpus(4, 16))}),
        "b": AccountState("b"),
    }
    s = snap(
        [job(9, "a", "u", cpus(1))],
        [
            run(1, "a", "u", cpus(2), priority=0),  # within a's own guarantee
            run(2, "b", "v", cpus(1), priority=1, stopping=True),  # already told to stop
            run(3, "b", "v", cpus(1), priority=2),
        ],
        accounts=accounts,
        policy="easy",
    )
    assert schedule(s) == [
        Preempt(3, 9, 300.0, "preempted: account a needs its guaranteed resources back"),
        Hold(9, "waiting for borrowed resources to be returned (preemption under way)", 1, 100),
    ]


def test_no_preemption_when_the_borrowers_would_not_make_room() -> None:
    accounts = {
        "a": AccountState("a", allocations={"p": Allocation(quota=cpus(4, 16))}),
        "b": AccountState("b", allocations={"p": Allocation(quota=cpus(3, 16))}),
        "c": AccountState("c"),
    }
    # Only c borrows, and its one CPU is not the two that a's job needs; b is within its own.
    s = snap(
        [job(9, "a", "u", cpus(2))],
        [run(1, "b", "v", cpus(3)), run(2, "c", "w", cpus(1))],
        accounts=accounts,
        policy="easy",
    )
    assert schedule(s) == [Hold(9, "waiting for 2 CPUs, 1G to free up (next in line)", 1, 100)]


def test_what_alone_exceeds_a_users_limit_is_rejected() -> None:
    s = snap(
        [job(1, r=cpus(3)), job(2, "b", "v")],
        user_limits={"u": Limits(cpus=2), "v": Limits(workloads=0)},
    )
    assert schedule(s) == [
        Reject(1, "it alone exceeds u's limit (its 2 CPUs)"),
        Reject(2, "it alone exceeds v's limit (its 0 workloads)"),
    ]
