"""The service lock: every `allot serve` holds it shared, `allot restore` exclusive, so that
neither runs beside the other (controller/lock.py). Real flocks on a real file; each holder
opens the file itself, as separate processes do."""

from __future__ import annotations

from pathlib import Path

import pytest

from allotment.controller.lock import Restoring, hold_service, service_lock_path, take_service


def test_services_share_it_and_a_restore_waits_for_all_of_them(tmp_path: Path) -> None:
    one, two = hold_service(tmp_path), hold_service(tmp_path)  # two `allot serve`
    assert take_service(tmp_path) is None
    one.close()
    assert take_service(tmp_path) is None  # the other still runs
    two.close()
    restoring = take_service(tmp_path)
    assert restoring is not None
    restoring.close()


def test_no_service_starts_during_a_restore(tmp_path: Path) -> None:
    restoring = take_service(tmp_path / "data")
    assert restoring is not None
    with pytest.raises(Restoring, match="a restore of this installation's database"):
        hold_service(tmp_path / "data")
    restoring.close()
    hold_service(tmp_path / "data").close()
    assert service_lock_path(tmp_path / "data").stat().st_mode & 0o777 == 0o600
