"""Admission to start, in-process on both databases: the scheduling loop hands the reconciler
the rows it admits, read in the admitting transaction, and the reconciler starts from them
without reading again. A cancel that lands in between must still win.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from allotment.backends.local.backend import LocalBackend
from allotment.backends.registry import local_backend
from allotment.config import load_policy
from allotment.controller.reconciler import Reconciler, read_rows
from allotment.controller.scheduling import SchedulingLoop
from allotment.controller.view import PolicyView
from allotment.installation import name_for
from tests.support.service import ROOT, Service


def _local_pools(view: PolicyView) -> list[str]:
    return [pool for pool, backend in view.backends.items() if backend == "local"]


@pytest.fixture
async def backend(service: Service) -> AsyncIterator[LocalBackend]:
    policy = load_policy(ROOT / "examples/department.yaml", environ={})
    data_dir = service.data_dir / "controller"
    found = local_backend(policy, data_dir, name_for(data_dir))
    assert found is not None
    yield found
    await found.close()


async def test_a_cancel_between_admission_and_start_wins(
    service: Service, backend: LocalBackend, shared: Path
) -> None:
    db = service.app.state.allotment.db
    ran = shared / "ran"
    async with service.admin() as c:
        r = await c.post(
            "workloads",
            json={
                "profile": "small",
                "account": "lab-a",
                "command": ["touch", str(ran)],
                "workdir": str(shared),
            },
        )
        assert r.status_code == 201, r.text
        wid = r.json()["id"]

    handed: dict[int, Any] = {}
    loop = SchedulingLoop(
        db,
        service.clock,
        _local_pools,
        on_admit=lambda w, row: handed.__setitem__(w, row),
        read_admitted=read_rows,
    )
    result = await loop.cycle()
    assert result is not None and result.admitted == [wid]
    row = handed[wid]
    assert row is not None and row.workload.id == wid and row.account == "physics/lab-a"

    async with service.admin() as c:  # after admission, before the reconciler acts
        assert (await c.post(f"workloads/{wid}/cancel")).status_code == 200

    reconciler = Reconciler(db, {"local": backend}, service.clock)
    reconciler.prime(row)  # as admitted: still meant to run
    assert await reconciler.reconcile(wid) is None

    async with service.admin() as c:
        w = (await c.get(f"workloads/{wid}")).json()
    assert (w["status"], w["started_at"]) == ("stopped", None), w
    assert not ran.exists()
    assert wid not in await backend.present()
