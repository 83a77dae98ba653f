"""Dask clusters' pure rules: names, sizes within bounds, where the dashboard is proxied."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from allotment.domain.dask import ClusterState, check_cluster_name, clamp_workers, dashboard_path


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


def test_the_dashboard_is_under_the_services_prefix() -> None:
    assert dashboard_path("/services/allotment/", 5) == "/services/allotment/dask/5/dashboard"
    assert dashboard_path("services/allotment", 5) == "/services/allotment/dask/5/dashboard"
    assert dashboard_path("/", 3) == "/dask/3/dashboard"


def test_states_read_in_words_and_end() -> None:
    assert [s.label for s in ClusterState] == [
        "starting", "running", "stopping", "stopped", "failed",
    ]  # fmt: skip
    assert [s for s in ClusterState if s.ended] == [ClusterState.STOPPED, ClusterState.FAILED]
