"""Pure rules: quantities, the accounts tree, permissions, sizing."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from allotment.domain.accounts import Role, ancestors, find_cycle, paths_by_name
from allotment.domain.costs import PERIODS, Rates, overlap_hours, period_start
from allotment.domain.permissions import Principal, Scope, expand_scopes
from allotment.domain.profiles import Node, ProfileOffer, Range, choose_size, fits_some_node
from allotment.domain.quantities import (
    format_bytes,
    format_duration,
    parse_bytes,
    parse_duration,
)
from allotment.domain.resources import Resources
from allotment.domain.workloads import (
    ACTIVE,
    MAX_ARRAY,
    MAX_ARRAY_INDEX,
    TERMINAL,
    TRANSITIONS,
    WorkloadState,
    can_cancel,
    can_move,
    parse_array,
    sources,
)
from tests.support.builders import principal as who

G = 1024**3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4G", 4 * G),
        ("4Gi", 4 * G),
        ("4GiB", 4 * G),
        ("512M", 512 * 1024**2),
        ("1.5T", 1536 * G),
        ("100", 100),
        (2048, 2048),
        ("4 g", 4 * G),
    ],
)
def test_parse_bytes(text: str | int, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("bad", ["4Q", "", "G", "-1G", True, -5, "four"])
def test_parse_bytes_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_bytes(bad)  # type: ignore[arg-type]


@given(st.integers(min_value=0, max_value=2**50))
def test_format_bytes_round_trips(n: int) -> None:
    text = format_bytes(n)
    if "." in text:  # rounded to one decimal of its unit: within 5%
        assert abs(parse_bytes(text) - n) <= 0.05 * n
    else:
        assert parse_bytes(text) == n


@given(st.integers(min_value=0, max_value=10**7))
def test_duration_round_trips(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("8h", 28800), ("1h30m", 5400), ("2d", 172800), ("90s", 90), ("45", 45), (60, 60)],
)
def test_parse_duration(text: str | int, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["soon", "5x", "1h soon", -1, False])
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)  # type: ignore[arg-type]


@given(st.dictionaries(st.integers(0, 12), st.one_of(st.none(), st.integers(0, 12)), max_size=12))
def test_find_cycle_is_right(links: dict[int, int | None]) -> None:
    parents = {str(k): (None if v is None else str(v)) for k, v in links.items()}
    cycle = find_cycle(parents)
    if cycle is not None:
        assert cycle[0] == cycle[-1]
        for child, parent in zip(cycle, cycle[1:], strict=False):
            assert parents[child] == parent
    else:
        paths = paths_by_name(parents)
        for name, path in paths.items():
            assert path.endswith(name)
            assert len(path.split("/")) <= len(parents) + 1


def test_ancestors() -> None:
    assert ancestors("a/b/c") == ["a", "a/b"]
    assert ancestors("a") == []


M, MG, V = Role.MEMBER, Role.MANAGER, Role.VIEWER

# (principal, owner, path, can read, can cancel)
WORKLOAD_RULES = [
    (who("bob", ("p/a", M)), "bob", "p/a", True, True),
    (who("bob", ("p/a", M)), "carol", "p/a", False, False),  # a member sees only their own
    (who("al", ("p/a", MG)), "bob", "p/a/x", True, True),  # a manager, below
    (who("al", ("p/a", MG)), "bob", "p/b", False, False),  # a manager, next door
    (who("al", ("p/a", MG)), "bob", "p/ab", False, False),  # a prefix is not a parent
    (who("fr", ("p/a", V)), "bob", "p/a", True, False),  # a viewer reads only
    (who("al", ("p/a", MG), scopes=(Scope.READ,)), "bob", "p/a", True, False),
    (who("bob", scopes=(Scope.READ,)), "bob", "p/a", True, False),  # read-only own
    (who("root", scopes=(Scope.ADMIN,)), "bob", "q", True, True),
    (who("x", ("p", MG), scopes=()), "bob", "p", False, False),  # no scope, nothing
]


@pytest.mark.parametrize(("p", "owner", "path", "read", "cancel"), WORKLOAD_RULES)
def test_workload_rules(p: Principal, owner: str, path: str, read: bool, cancel: bool) -> None:
    assert p.can_read_workload(owner, path) is read
    assert p.can_cancel_workload(owner, path) is cancel


def test_submit_and_account_rules() -> None:
    bob = who("bob", ("p/a", M))
    assert bob.can_submit_to("p/a")
    assert not bob.can_submit_to("p/a/x")  # membership does not flow down for spending
    assert not bob.can_submit_to("p")
    al = who("al", ("p/a", MG))
    assert al.can_submit_to("p/a/x")
    assert not who("fr", ("p/a", V)).can_submit_to("p/a")
    assert not who("bob", ("p/a", M), scopes=(Scope.READ,)).can_submit_to("p/a")
    assert [bob.can_see_account(x) for x in ("p", "p/a", "p/a/x", "p/b", "q")] == [
        True,
        True,
        True,
        False,
        False,
    ]
    assert al.can_change_account("p/a/x") and not al.can_change_account("p/a")
    assert al.can_change_memberships("p/a") and not al.can_change_memberships("p")
    assert not who("al", ("p/a", MG), scopes=(Scope.READ, Scope.SUBMIT)).can_change_memberships(
        "p/a"
    )


def test_admin_scope_implies_the_others() -> None:
    # ... all but spawn, which is the hub's alone: an admin's token cannot act as others.
    assert expand_scopes(["custom:allotment:admin", "read:users"]) == frozenset(Scope) - {
        Scope.SPAWN
    }
    assert expand_scopes(["custom:allotment:spawn"]) == {Scope.SPAWN}
    assert expand_scopes(["custom:allotment:submit"]) == {Scope.SUBMIT, Scope.READ}


OFFER = ProfileOffer("small", Resources.of(2, 4 * G), {"cpus": Range(1, 8)})


def test_choose_size_within_options() -> None:
    assert choose_size(OFFER) == Resources.of(2, 4 * G)
    assert choose_size(OFFER, cpus=6) == Resources.of(6, 4 * G)
    with pytest.raises(ValueError, match="allows 1 to 8 CPUs; you asked for 9"):
        choose_size(OFFER, cpus=9)
    with pytest.raises(ValueError, match="fixed GiB of memory of 4"):
        choose_size(OFFER, memory=8 * G)


def test_choose_gpus_keeps_the_model() -> None:
    offer = ProfileOffer("gpu", Resources.of(8, 64 * G, {"a100": 1}), {"gpus": Range(1, 4)})
    assert choose_size(offer, gpus=3).gpus == {"a100": 3}


def test_fits_some_node_says_what_would_fit() -> None:
    nodes = [Node("n1", Resources.of(8, 32 * G)), Node("g1", Resources.of(16, 64 * G, {"a100": 2}))]
    assert fits_some_node(Resources.of(16, 8 * G, {"a100": 2}), nodes) is None
    msg = fits_some_node(Resources.of(4, 8 * G, {"a100": 3}), nodes)
    assert msg is not None and "largest node (g1) has 16 CPUs, 64G, 2× a100" in msg


def test_offering_gpus_without_a_model_is_refused() -> None:
    offer = ProfileOffer("cpu", Resources.of(2, 4 * G), {"gpus": Range(0, 2)})
    with pytest.raises(ValueError, match="^profile 'cpu' has no GPU model to give you$"):
        choose_size(offer, gpus=1)
    assert choose_size(offer, gpus=0) == Resources.of(2, 4 * G)  # the default: nothing to pick


def test_quantities_too_large_for_a_number_are_refused() -> None:
    with pytest.raises(ValueError, match="is too large for a size"):
        parse_bytes("9" * 400 + "P")  # a float overflows to infinity rather than raising
    with pytest.raises(ValueError, match="^'inf' is too large for a size$"):
        parse_bytes(float("inf"))
    with pytest.raises(ValueError, match="^'inf' is too large for a duration$"):
        parse_duration(float("inf"))


# -- permissions beyond the workload rules ---------------------------------------------------


def test_admin_may_do_everything_everywhere() -> None:
    root = who("root", scopes=(Scope.ADMIN,))
    assert root.can_submit_to("q/any")
    assert root.can_see_account("q/any")
    assert root.can_change_account("q")  # even a top-level account, which has no ancestor
    assert root.can_change_memberships("q")


def test_without_the_scope_a_role_gives_nothing() -> None:
    al = who("al", ("p", MG), scopes=(Scope.SUBMIT,))  # submit implies read, not manage
    assert al.can_see_account("p")
    assert not al.can_change_account("p/a")
    assert not al.can_change_memberships("p/a")
    nobody = who("al", ("p", MG), scopes=())
    assert not nobody.can_see_account("p")


def test_spendable_accounts_and_oversight_roots() -> None:
    p = who("u", ("p/b", M), ("p/a", MG), ("q", V), ("p/a", M))
    # Viewers never spend; a membership held twice is listed once, sorted.
    assert p.spendable_accounts() == ["p/a", "p/b"]
    # Members oversee nothing but their own workloads.
    assert p.oversight_roots() == ["p/a", "q"]
    assert who("u").spendable_accounts() == []
    assert who("u").oversight_roots() == []


# -- costs -------------------------------------------------------------------------------------


def test_hourly_price_is_what_was_requested_times_the_rates() -> None:
    rates = Rates(cpu=0.5, memory=0.25, gpu={"a100": 2.0})
    # 4 × 0.5 + 8 GiB × 0.25 + 2 × 2.0; a model without a price costs nothing.
    assert rates.hourly(Resources.of(4, 8 * G, {"a100": 2, "h100": 1})) == 8.0
    assert Rates().hourly(Resources.of(64, 512 * G, {"a100": 8})) == 0.0


THU = datetime(2026, 8, 13, 15, 30, 12, 345, tzinfo=UTC)  # a Thursday


@pytest.mark.parametrize(
    ("period", "start"),
    [
        ("day", datetime(2026, 8, 13, tzinfo=UTC)),
        ("week", datetime(2026, 8, 10, tzinfo=UTC)),  # the Monday before
        ("month", datetime(2026, 8, 1, tzinfo=UTC)),
        ("quarter", datetime(2026, 7, 1, tzinfo=UTC)),
        ("year", datetime(2026, 1, 1, tzinfo=UTC)),
    ],
)
def test_period_start(period: str, start: datetime) -> None:
    assert period_start(THU, period) == start


def test_period_start_is_in_utc() -> None:
    # 01:00 on New Year's Day in UTC+2 is still the old year in UTC.
    local = datetime(2026, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=2)))
    assert period_start(local, "day") == datetime(2025, 12, 31, tzinfo=UTC)
    assert period_start(local, "year") == datetime(2025, 1, 1, tzinfo=UTC)


def test_an_unknown_period_is_refused_with_the_known_ones() -> None:
    with pytest.raises(
        ValueError, match="^unknown budget period 'fortnight'; use one of day, week, month"
    ):
        period_start(THU, "fortnight")


@given(
    st.datetimes(
        min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    ),
    st.sampled_from(PERIODS),
)
def test_a_period_starts_at_midnight_at_or_before_now(now: datetime, period: str) -> None:
    start = period_start(now, period)
    assert start <= now
    assert start.time() == time(0) and start.tzinfo == UTC
    assert now - start < timedelta(days=366)
    assert period_start(start, period) == start  # its own start is in the same period


def test_overlap_hours() -> None:
    t = datetime(2026, 8, 13, 10, tzinfo=UTC)
    h = timedelta(hours=1)
    assert overlap_hours(t, t + 2 * h, t + h, t + 5 * h) == 1.0  # ended; counted from since
    assert overlap_hours(t, None, t - h, t + 3 * h) == 3.0  # still running: up to now
    assert overlap_hours(t, t + h, t + 2 * h, t + 5 * h) == 0.0  # ended before the period
    assert overlap_hours(t, t + h / 2, t, t + h) == 0.5


# -- workloads ---------------------------------------------------------------------------------


def test_states_parse_from_their_labels() -> None:
    for state in WorkloadState:
        assert WorkloadState.parse(state.label) is state
        assert WorkloadState.parse(state.label.capitalize()) is state
    assert WorkloadState.RUNNING.label == "running"
    with pytest.raises(
        ValueError, match="^unknown state 'bogus'; use one of pending, admitted, starting"
    ):
        WorkloadState.parse("bogus")


S = WorkloadState


@pytest.mark.parametrize(
    ("status", "target", "can"),
    [
        (S.PENDING, S.RUNNING, True),
        (S.RUNNING, S.RUNNING, True),
        (S.STARTING, S.RUNNING, True),
        (S.RUNNING, S.STOPPED, False),  # already told to stop
        (S.STOPPING, S.STOPPED, False),
        (S.STOPPED, S.STOPPED, False),
        (S.FAILED, S.RUNNING, False),  # ended on its own: nothing left to cancel
        (S.STOPPED, S.RUNNING, False),
    ],
)
def test_can_cancel(status: WorkloadState, target: WorkloadState, can: bool) -> None:
    assert can_cancel(status, target) is can


@pytest.mark.parametrize(
    ("text", "indices"),
    [
        ("7", [7]),
        ("0-3", [0, 1, 2, 3]),
        ("0-9:3", [0, 3, 6, 9]),
        ("1,4,9", [1, 4, 9]),
        ("5, 1-2, 5", [1, 2, 5]),  # spaces, duplicates and disorder are fine
        ("0-99:50,10", [0, 10, 50]),
        (f"{MAX_ARRAY_INDEX}", [MAX_ARRAY_INDEX]),
    ],
)
def test_parse_array(text: str, indices: list[int]) -> None:
    assert parse_array(text) == indices


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "array '' has an empty element; write e.g. 0-99 or 1,4,9"),
        ("1,,2", "array '1,,2' has an empty element"),
        ("a-b", "array element 'a-b' is not a number, a range (0-99) or a stepped range"),
        ("-1", "array element '-1' is not a number"),
        ("1-5:x", "array element '1-5:x' is not a number"),
        ("3-1", "array element '3-1' needs 0 ≤ start ≤ end and a step of at least 1"),
        ("1-5:0", "array element '1-5:0' needs 0 ≤ start ≤ end"),
        (
            f"0-{MAX_ARRAY_INDEX + 1}",
            f"array element '0-{MAX_ARRAY_INDEX + 1}' goes to {MAX_ARRAY_INDEX + 1}; "
            f"indices go up to {MAX_ARRAY_INDEX}",
        ),
        (f"0-{MAX_ARRAY}", f"an array may have at most {MAX_ARRAY} tasks"),
        (f"0-{MAX_ARRAY - 1},{MAX_ARRAY}", f"an array may have at most {MAX_ARRAY} tasks"),
    ],
)
def test_parse_array_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_array(text)
    assert str(info.value).startswith(message)


def test_an_array_may_have_max_array_tasks() -> None:
    assert parse_array(f"0-{MAX_ARRAY - 1}") == list(range(MAX_ARRAY))


@given(st.sets(st.integers(0, MAX_ARRAY_INDEX), min_size=1, max_size=50))
def test_a_list_of_indices_parses_to_itself(indices: set[int]) -> None:
    assert parse_array(",".join(map(str, indices))) == sorted(indices)


# -- the transitions table -----------------------------------------------------------------------


def test_a_guard_is_exactly_the_states_that_may_move_there() -> None:
    for to in WorkloadState:
        assert sources(to) == {s for s in WorkloadState if can_move(s, to)}
        assert sources(to) == {s for s, targets in TRANSITIONS.items() if to in targets}
    assert sources(S.ADMITTED) == {S.PENDING}
    assert sources(S.STOPPING) == {S.STARTING, S.RUNNING}
    assert sources(S.PENDING) == set()  # nothing goes back to Allotment's queue
    assert sources(S.STARTING) == {S.ADMITTED, S.RUNNING}  # the backend's requeue


def test_the_transitions_keep_the_lifecycle() -> None:
    assert set(TRANSITIONS) == set(WorkloadState)
    for s in WorkloadState:
        assert not can_move(s, s)  # staying put is not a move
        if s in TERMINAL:
            assert TRANSITIONS[s] == frozenset()  # never left
        else:
            assert {S.STOPPED, S.FAILED} <= TRANSITIONS[s]  # anything alive may end at once
    # Forward only, but for the requeue: a batch job whose Slurm node failed goes back to
    # Slurm's queue (STARTING), never to Allotment's (admitted once, it stays admitted).
    back = {(s, t) for s in WorkloadState for t in WorkloadState if can_move(s, t) and t < s}
    assert back == {(S.RUNNING, S.STARTING)}
    # Holding resources is the stretch from admission to the end of the stop.
    assert ACTIVE == tuple(s for s in WorkloadState if S.ADMITTED <= s <= S.STOPPING)
