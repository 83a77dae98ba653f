"""The scheduler, pure: exact decision lists for hand-worked cases, and properties."""

from __future__ import annotations

from dataclasses import replace

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
    order_queue,
    schedule,
)
from allotment.scheduler.fairshare import fair_share_factors

G = 2**30


def cpus(n: float, mem: int = 1, gpus: dict[str, int] | None = None) -> Resources:
    return Resources.of(n, mem * G, gpus)


def job(
    i: int,
    account: str = "a",
    user: str = "u",
    r: Resources | None = None,
    at: float = 0,
    wall: float = 100,
    pool: str = "p",
    **kw: object,
) -> Pending:
    return Pending(i, user, account, pool, r or cpus(1), at, wall, **kw)  # type: ignore[arg-type]


def run(
    i: int,
    account: str = "a",
    user: str = "u",
    r: Resources | None = None,
    end: float = 100,
    node: str = "n1",
    **kw: object,
) -> Running:
    return Running(i, user, account, "p", node, r or cpus(1), 0, end, **kw)  # type: ignore[arg-type]


def snap(
    pending: list[Pending],
    running: list[Running] | None = None,
    *,
    nodes: int = 1,
    size: Resources | None = None,
    accounts: dict[str, AccountState] | None = None,
    **kw: object,
) -> Snapshot:
    return Snapshot(
        now=0,
        accounts=accounts or {"a": AccountState("a"), "b": AccountState("b")},
        nodes=[NodeState("p", f"n{i + 1}", size or cpus(4, 16)) for i in range(nodes)],
        running=running or [],
        pending=pending,
        **kw,  # type: ignore[arg-type]
    )


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
