"""Dask clusters' pure rules: names, sizes within bounds, where the dashboard is proxied."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from allotment.domain.dask import (
    ClusterState,
    check_cluster_name,
    clamp_workers,
    dashboard_path,
    idle_worker_ids,
)


@pytest.mark.parametrize("name", ["era5", "a", "x.y_z-1", "0" * 63])
def test_good_names_pass(name: str) -> None:
    assert check_cluster_name(name) == name


@pytest.mark.parametrize("name", ["", "Era5", "-x", ".x", "a b", "a/b", "0" * 64, "é"])
def test_bad_names_say_how_to_write_one(name: str) -> None:
    with pytest.raises(ValueError, match="lower-case letters, digits"):
        check_cluster_name(name)


@given(st.integers(-5, 100), st.integers(0, 50), st.integers(0, 50))
def test_workers_stay_within_their_bounds(wanted: int, low: int, span: int) -> None:
    got = clamp_workers(wanted, low, low + span)
    assert low <= got <= low + span
    assert got == wanted or wanted < low or wanted > low + span


def test_idle_workers_are_workload_ids_in_the_schedulers_order_and_bounded() -> None:
    names = ["12", "tcp://10.0.0.1:4000", "7", "12", "\u0663", "-3", "9" * 19, "8", "5"]
    assert idle_worker_ids(names, 10) == [12, 7, 8, 5]
    assert idle_worker_ids(names, 2) == [12, 7]
    assert idle_worker_ids([], 4) == []


@given(st.lists(st.text(max_size=20), max_size=30), st.integers(0, 10))
def test_idle_workers_never_exceed_the_limit_nor_repeat(names: list[str], limit: int) -> None:
    got = idle_worker_ids(names, limit)
    assert len(got) <= limit and len(set(got)) == len(got)
    assert all(any(n.isascii() and n.isdigit() and int(n) == i for n in names) for i in got)


def test_the_dashboard_is_under_the_services_prefix() -> None:
    assert dashboard_path("/services/allotment/", 5) == "/services/allotment/dask/5/dashboard"
    assert dashboard_path("services/allotment", 5) == "/services/allotment/dask/5/dashboard"
    assert dashboard_path("/", 3) == "/dask/3/dashboard"


def test_states_read_in_words_and_end() -> None:
    assert [s.label for s in ClusterState] == [
        "starting", "running", "stopping", "stopped", "failed",
    ]  # fmt: skip
    assert [s for s in ClusterState if s.ended] == [ClusterState.STOPPED, ClusterState.FAILED]
