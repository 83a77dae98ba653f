"""An installation's name: stable, short, distinct per data directory, and never an old name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from allotment.config.models import ServiceSettings
from allotment.installation import NAME_PATTERN, check_name, installation_of, name_for


def test_derived_from_the_data_directory(tmp_path: Path) -> None:
    a, b = tmp_path / "service", tmp_path / "other" / "service"
    assert name_for(a) == name_for(a)  # stable: the same after a restart
    assert name_for(a) != name_for(b)  # distinct: same last part, other directory
    assert re.fullmatch(r"service-[0-9a-f]{8}", name_for(a))


def test_derived_from_the_resolved_path(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert name_for(tmp_path / "link") == name_for(tmp_path / "real")
    assert name_for(tmp_path / "real" / ".." / "real") == name_for(tmp_path / "real")


@pytest.mark.parametrize(
    "last", ["Allotment Service", "2024", "", "___", "x" * 100, "w1", "helpers", "Ünï"]
)
def test_every_directory_gets_a_valid_name(tmp_path: Path, last: str) -> None:
    name = name_for(tmp_path / last if last else Path("/"))
    assert check_name(name) == name
    assert re.fullmatch(NAME_PATTERN, name)


@pytest.mark.parametrize(
    "name", ["w1", "w42", "helpers", "", "A", "1x", "a_b", "a/b", "x" * 41, "lab\n", "lab\nw1"]
)
def test_names_that_cannot_name_an_installation(name: str) -> None:
    with pytest.raises(ValueError, match="installation name"):
        check_name(name)
    with pytest.raises(ValueError, match="installation"):
        ServiceSettings(installation=name)


def test_the_policy_may_name_it() -> None:
    assert ServiceSettings(installation="physics-hub").installation == "physics-hub"
    assert ServiceSettings().installation is None


def test_the_configured_name_wins_over_the_derived_one(tmp_path: Path) -> None:
    assert installation_of("physics-hub", tmp_path) == "physics-hub"
    assert installation_of(None, tmp_path) == name_for(tmp_path)
