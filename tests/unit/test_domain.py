"""Pure rules: quantities, the accounts tree, permissions, sizing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from allotment.domain.accounts import Membership, Role, ancestors, find_cycle, paths_by_name
from allotment.domain.permissions import Principal, Scope, expand_scopes
from allotment.domain.profiles import Node, ProfileOffer, Range, choose_size, fits_some_node
from allotment.domain.quantities import (
    format_bytes,
    format_duration,
    parse_bytes,
    parse_duration,
)
from allotment.domain.resources import Resources

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


def who(
    user: str,
    *memberships: tuple[str, Role],
    scopes: tuple[Scope, ...] = (Scope.READ, Scope.SUBMIT, Scope.MANAGE),
) -> Principal:
    return Principal(
        user, expand_scopes(scopes), tuple(Membership(user, a, r) for a, r in memberships)
    )


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
