"""A backend that places work itself (Slurm): Allotment admits on policy alone, the backend
queues what does not fit and says why, a resumed start never submits twice, a requeue by the
backend closes the run and waits again, and a backend that does not answer is said, not
concluded from. The real thing: tests/backends (contract) and tests/integration/test_slurm_*."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from allotment.backends.fake import Queues
from allotment.db.tables import LedgerEntry, OpenCharge
from tests.controller.conftest import Fast

POLICY = """
accounts:
  lab:
    shares: 1
    members: [alice]
pools:
  workstation:
    backend: slurm
    partition: main
    nodes:
      - {name: n1, cpus: 4, memory: 16G}
      - {name: n2, cpus: 4, memory: 16G}
    rates: {cpu: 3.6}
profiles:
  small:
    pool: workstation
    size: {cpus: 1, memory: 1G}
limits:
  default: {cpus: 12}
scheduling: {stop_grace: 1s}
"""


@pytest.fixture
def policy() -> str:
    return POLICY


@pytest.fixture
def backend() -> Queues:
    return Queues()


@pytest.fixture
def kind() -> str:
    return "slurm"


async def test_work_beyond_the_declared_nodes_is_submitted_and_waits_in_the_backend(
    fast: Fast, backend: Queues
) -> None:
    backend.eta = "2026-12-02T18:00:00+00:00"
    wids = [await fast.submit("work") for _ in range(10)]
    for wid in wids:  # 10 CPUs on two nodes of 4: the backend queues them all
        w = await fast.eventually(wid, lambda w: w["reason"] == backend.waiting)
        assert w["status"] == "starting"
        assert w["expected_start"].startswith("2026-12-02T18:00:00")
    assert sorted(backend.queued) == wids
    backend.begin(wids[0], "n2")
    w = await fast.until(wids[0], "running")
    assert (w["node"], w["host"], w["reason"]) == ("n2", "n2.fake", "running on n2")
    assert w["expected_start"] is None
    # The policy still has its say: a user's limit of 12 CPUs holds the 13th in Allotment.
    more = [await fast.submit("work") for _ in range(3)]
    held = await fast.eventually(more[-1], lambda w: " is using " in w["reason"])
    assert held["status"] == "pending"
    assert set(backend.submissions.values()) == {1}


async def test_a_restarted_controller_finds_queued_work_and_submits_nothing_twice(
    fast: Fast, backend: Queues
) -> None:
    wid = await fast.submit("work")
    await fast.eventually(wid, lambda w: w["reason"] == backend.waiting)
    await fast.abandon()
    await fast.restart()
    backend.begin(wid, "n1")
    await fast.until(wid, "running")
    assert backend.submissions[wid] == 1


async def test_a_requeue_by_the_backend_ends_the_run_and_waits_again(
    fast: Fast, backend: Queues
) -> None:
    wid = await fast.submit("work")
    await fast.eventually(wid, lambda w: w["status"] == "starting")
    backend.begin(wid, "n1")
    await fast.until(wid, "running")
    fast.clock.advance(600)
    await fast.controller.meter.pass_once()
    backend.requeue(wid, "requeued by the fake: node n1 stopped responding")
    w = await fast.eventually(wid, lambda w: w["status"] == "starting")
    assert (w["reason"], w["started_at"], w["node"]) == (
        "requeued by the fake: node n1 stopped responding",
        None,
        None,
    )
    # The lost run is charged, and its charge closed: the time queued again costs nothing.
    async with fast.controller.db.read() as s:
        charged = (await s.execute(select(LedgerEntry.amount))).scalars().all()
        assert not (await s.execute(select(OpenCharge))).first()
    assert sum(charged) == 600_000  # 3.6 an hour for one CPU, 10 minutes: 0.6
    fast.clock.advance(3600)  # an hour in the queue again
    backend.begin(wid, "n2")
    w = await fast.until(wid, "running")
    assert w["node"] == "n2" and backend.submissions[wid] == 1
    fast.clock.advance(60)
    await fast.controller.meter.pass_once()
    async with fast.controller.db.read() as s:
        running = (await s.execute(select(OpenCharge.amount))).scalars().all()
    assert running == [60_000]  # the second run alone, from its own start


async def test_queued_work_cancelled_in_the_backend_ends_with_its_reason(
    fast: Fast, backend: Queues
) -> None:
    wid = await fast.submit("work")
    await fast.eventually(wid, lambda w: w["status"] == "starting")
    backend.cancel_queued(wid)
    w = await fast.until(wid, "failed")
    assert w["reason"]


async def test_cancelling_queued_work_takes_it_out_of_the_backend(
    fast: Fast, backend: Queues
) -> None:
    wid = await fast.submit("work")
    await fast.eventually(wid, lambda w: w["status"] == "starting")
    await fast.cancel(wid)
    await fast.until(wid, "stopped")
    assert wid not in backend.queued


async def test_a_backend_that_does_not_answer_is_said_and_nothing_is_lost(
    fast: Fast, backend: Queues
) -> None:
    backend.down = True
    wid = await fast.submit("work")
    w = await fast.eventually(wid, lambda w: "does not answer" in w["reason"])
    assert w["status"] in ("admitted", "starting")
    backend.down = False
    await fast.eventually(wid, lambda w: w["reason"] == backend.waiting, seconds=15)
    assert backend.submissions[wid] == 1


async def test_a_run_requeued_before_any_meter_pass_is_still_charged(
    fast: Fast, backend: Queues
) -> None:
    """A run shorter than a meter pass has no open charge yet: its charge is opened from its
    start and closed in the transaction that requeues it (a user could otherwise run free by
    having Slurm requeue their job within the minute)."""
    wid = await fast.submit("work")
    await fast.eventually(wid, lambda w: w["status"] == "starting")
    backend.begin(wid, "n1")
    await fast.until(wid, "running")
    fast.clock.advance(20)
    backend.requeue(wid, "requeued by the fake: node n1 stopped responding")
    await fast.eventually(wid, lambda w: w["status"] == "starting")
    async with fast.controller.db.read() as s:
        charged = (await s.execute(select(LedgerEntry.amount))).scalars().all()
    assert sum(charged) == 20_000  # 3.6 an hour, 20 seconds


async def test_an_account_made_through_the_api_may_not_take_anothers_slurm_name(
    fast: Fast,
) -> None:
    async with fast.client() as c:
        for name, parent in (("x", "lab"), ("x.y", "lab")):
            r = await c.post("accounts", json={"name": name, "parent": parent})
            assert r.status_code == 201, r.text
        r = await c.post("accounts", json={"name": "y", "parent": "lab/x"})
    assert r.status_code == 409
    assert "Slurm as account 'lab.x.y', which 'lab/x.y' already is" in r.json()["detail"]


async def test_work_that_started_and_ended_between_two_looks_ran_and_is_charged(
    fast: Fast, backend: Queues
) -> None:
    """A short job Slurm started and ended before the controller looked again: it is
    recorded as having run (started, then ended with its exit status), never as a job that
    ended in the queue, and its run is charged."""
    backend.watches = False  # nobody is told until the controller looks
    wid = await fast.submit("work")
    await fast.eventually(wid, lambda w: w["reason"] == backend.waiting)
    backend.begin(wid, "n3")
    fast.clock.advance(30)
    backend.finish(wid, 0)
    await fast.abandon()
    await fast.restart()  # looks again: finds it queued in its records, ended in the backend
    await fast.until(wid, "running")
    await fast.poll_once()
    w = await fast.until(wid, "stopped")
    assert (w["exit_code"], w["node"]) == (0, "n3") and w["started_at"] is not None
