"""An installation's name claim (``controller/lock.py``) is a file the controller truncates and
writes: a link planted where it will be made is never followed, and a name is never a path."""

from __future__ import annotations

from pathlib import Path

import pytest

from allotment.controller.lock import NameInUse, take_lock


def test_a_link_where_the_claim_goes_is_not_followed(tmp_path: Path) -> None:
    claims = tmp_path / "claims"
    claims.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (claims / "lab.lock").symlink_to(victim)
    with pytest.raises(NameInUse, match="it must be a plain file"):
        take_lock(tmp_path / "data", "lab", claims)
    assert victim.read_text() == "precious\n"
    # The data directory's own lock was given back: once the link is gone, it starts.
    (claims / "lab.lock").unlink()
    held = take_lock(tmp_path / "data", "lab", claims)
    assert held is not None
    held.close()


@pytest.mark.parametrize("name", ["../escape", "a/b", "lab\n", ""])
def test_a_name_is_never_a_path(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="installation name"):
        take_lock(tmp_path / "data", name, tmp_path / "claims")
    assert not (tmp_path / "escape.lock").exists()
