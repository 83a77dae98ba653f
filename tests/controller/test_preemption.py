"""Preemption end to end: an account that lent its guaranteed share gets it back from a
borrower, whose workload is stopped saying why; nothing is started twice."""

from __future__ import annotations

import pytest

from tests.controller.conftest import Fast


@pytest.fixture
def policy() -> str:
    return """
accounts:
  owner: {members: [alice]}
  other: {members: [bob]}
pools:
  workstation:
    backend: local
    nodes:
      - {name: ws1, cpus: 4, memory: 16G}
profiles:
  small:
    pool: workstation
    size: {cpus: 1, memory: 1G}
allocations:
  - account: owner
    pool: workstation
    quota: {cpus: 2, memory: 8G}
scheduling: {policy: easy, stop_grace: 1s}
"""


async def test_a_borrower_is_preempted_for_a_guarantee(fast: Fast) -> None:
    borrowed = [await fast.submit(account="other") for _ in range(4)]
    for wid in borrowed:
        await fast.until(wid, "running")
    owed = await fast.submit(account="owner")
    await fast.until(owed, "running")
    stopped = [w for w in borrowed if (await fast.get(w))["status"] != "running"]
    assert len(stopped) == 1, stopped
    w = await fast.until(stopped[0], "stopped")
    assert w["reason"] == "preempted: account owner needs its guaranteed resources back"
    assert sorted(fast.backend.running()) == sorted([*set(borrowed) - set(stopped), owed])
    assert set(fast.backend.launches.values()) == {1}
