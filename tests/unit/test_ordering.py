"""One ordering rule: trace replay's queue orders jobs exactly as the live scheduler does, at
any time, before and after they reach ``max_age``.

Times, weights and factors are drawn so that their arithmetic is exact in floating point (whole
seconds, a power-of-two ``max_age``, factors in 64ths): the replay's queue keeps an equivalent
time-independent key, and the property is about the rule, not the last bit of a rounding.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from allotment.domain.resources import Resources
from allotment.scheduler.ordering import age_factor, order_queue, priority
from allotment.scheduler.snapshot import AccountState, NodeState, Pending, Snapshot, Weights
from allotment.sim.queue import ReplayQueue
from tests.support.builders import pending

ACCOUNTS = ("a", "b", "c")
USERS = ("u1", "u2")


@st.composite
def jobs(draw: st.DrawFn) -> list[Pending]:
    n = draw(st.integers(0, 30))
    return [
        Pending(
            id=i,
            user=draw(st.sampled_from(USERS)),
            account=draw(st.sampled_from(ACCOUNTS)),
            pool="p",
            resources=Resources.of(1),
            submitted=float(draw(st.integers(0, 4096))),
            walltime=60.0,
            priority=float(draw(st.integers(0, 3))),
        )
        for i in range(1, n + 1)
    ]


factors = st.dictionaries(
    st.tuples(st.sampled_from(ACCOUNTS), st.sampled_from(USERS)),
    st.integers(0, 64).map(lambda k: k / 64),
)
weights = st.builds(
    Weights,
    fairshare=st.sampled_from([0.0, 1.0, 64.0, 10_000.0]),
    age=st.sampled_from([0.0, 1.0, 1_000.0]),
    max_age=st.sampled_from([0.0, 256.0, 1024.0, 4096.0]),
)


def live_order(
    pending: list[Pending], w: Weights, fs: dict[tuple[str, str], float], now: float
) -> list[int]:
    snap = Snapshot(
        now=now,
        accounts={a: AccountState(a) for a in ACCOUNTS},
        nodes=[NodeState("p", "n", Resources.of(4))],
        pending=pending,
        weights=w,
        fair_share=fs,
    )
    return [p.id for p in order_queue(snap)]


@settings(max_examples=300, deadline=None)
@given(
    jobs(),
    weights,
    factors,
    st.lists(st.integers(0, 16_384), min_size=1, max_size=4),
    st.data(),
)
def test_replay_queue_orders_as_the_live_scheduler(
    pending: list[Pending],
    w: Weights,
    fs: dict[tuple[str, str], float],
    times: list[int],
    data: st.DataObject,
) -> None:
    queue = ReplayQueue("fairshare", w)
    queue.reorder(fs)
    for p in pending:
        queue.add(p)
    now = float(max(p.submitted for p in pending)) if pending else 0.0
    for t in sorted(times):
        now = max(now, float(t))
        # Jobs leave (admitted, rejected) between cycles, as in a replay.
        here = list(queue.walk(now))
        if here:
            gone = data.draw(st.sampled_from(here))
            queue.remove(gone)
        walk = queue.walk(now)
        assert [p.id for p in walk] == live_order(list(walk), w, fs, now)
        assert len(walk) == len(list(walk))


def test_age_stops_counting_at_max_age() -> None:
    """Two jobs that both waited longer than ``max_age`` are ordered by the rest of their
    priority, not by which waited longer (the replay's copy of the rule used to forget this)."""
    w = Weights(fairshare=0.0, age=1_000.0, max_age=100.0)
    early = pending(1, at=0.0)
    late = pending(2, at=50.0, priority=1.0)
    assert age_factor(500.0 - early.submitted, w.max_age) == 1.0
    assert priority(late, 0.0, w, 500.0) > priority(early, 0.0, w, 500.0)
    queue = ReplayQueue("fairshare", w)
    queue.add(early)
    queue.add(late)
    assert [p.id for p in queue.walk(60.0)] == [1, 2] == live_order([early, late], w, {}, 60.0)
    assert [p.id for p in queue.walk(500.0)] == [2, 1] == live_order([early, late], w, {}, 500.0)


def test_fifo_orders_by_submission() -> None:
    queue = ReplayQueue("easy", Weights())
    a = pending(1, at=5.0, priority=9.0)
    b = pending(2, at=1.0)
    queue.add(a)
    queue.add(b)
    walk = queue.walk(10.0)
    assert [p.id for p in walk] == [2, 1]
    assert (walk[0].id, [p.id for p in walk[1:]], len(walk)) == (2, [1], 2)


finite = st.floats(0, 1e9, allow_nan=False, allow_infinity=False)


@given(
    st.builds(Weights, fairshare=finite, age=finite, max_age=finite),
    st.floats(0, 1, allow_nan=False),
    finite,
    st.floats(-1e6, 1e6, allow_nan=False),
)
def test_the_young_key_is_the_priority_at_submission(
    w: Weights, fs: float, submitted: float, boost: float
) -> None:
    """The replay's key for young jobs, written out for speed, is ``priority`` at submission
    less the age every job shares, to the bit."""
    p = pending(1, at=submitted, priority=boost)
    queue = ReplayQueue("fairshare", w)
    queue.reorder({("a", "u"): fs})
    shared = w.age * submitted / w.max_age if w.max_age > 0 else 0.0
    key = queue._young_key()(p)
    assert key == (-(priority(p, fs, w, submitted) - shared), submitted, 1)
