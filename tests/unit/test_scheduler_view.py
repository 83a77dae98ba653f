"""The policy → scheduler step (``config/scheduler_view.py``), shared by the controller and
the simulator: what of a policy the scheduler sees."""

from __future__ import annotations

from allotment.config import parse_policy
from allotment.config.scheduler_view import scheduler_view
from allotment.scheduler.snapshot import Allocation, Limits, NodeState, Weights
from tests.support.builders import cpus

POLICY = """\
accounts:
  physics: {shares: 3}
  lab-a: {parent: physics, shares: 2}
pools:
  ws:
    backend: slurm
    partition: main
    nodes:
      - {name: n1, cpus: 8, memory: 32G}
      - {name: g1, cpus: 16, memory: 64G, gpus: {a100: 2}}
allocations:
  - {account: physics/lab-a, pool: ws, quota: {cpus: 4, memory: 8G}, borrowing_limit: {cpus: 2}}
  - {account: physics, pool: ws, quota: {gpus: {a100: 1}}}
limits:
  default: {workloads: 10}
  accounts: {lab-a: {cpus: 6}}
  users: {alice: {gpus: 1}}
scheduling: {fairshare_weight: 5, age_weight: 7, max_age: 1d}
"""


def test_the_parts_of_a_policy_the_scheduler_needs() -> None:
    accounts, nodes, users, default, weights = scheduler_view(parse_policy(POLICY, environ={}))
    assert set(accounts) == {"physics", "physics/lab-a"}
    lab = accounts["physics/lab-a"]
    assert (lab.shares, lab.limits) == (2.0, Limits(cpus=6))
    assert lab.allocations == {"ws": Allocation(cpus(4, 8), borrowing_limit=cpus(2, 0))}
    physics = accounts["physics"]
    assert (physics.shares, physics.limits) == (3.0, None)
    assert physics.allocations["ws"].quota == cpus(0, 0, {"a100": 1})
    assert physics.allocations["ws"].borrowing_limit is None
    assert nodes == [
        NodeState("ws", "n1", cpus(8, 32)),
        NodeState("ws", "g1", cpus(16, 64, {"a100": 2})),
    ]
    assert users == {"alice": Limits(gpus=1)}
    assert default == Limits(workloads=10)
    assert weights == Weights(5.0, 7.0, 86_400.0)
