"""The nodes the scheduler hands out: declared, lowered to what their backend reports."""

from __future__ import annotations

import asyncio

from allotment.backends.base import NodeCapacity
from allotment.backends.fake import FakeBackend
from allotment.controller.capacity import read_capacity, schedulable
from allotment.domain.resources import Resources
from allotment.scheduler import NodeState

G = 2**30
BACKENDS = {"cpu": "local", "gpu": "slurm"}
NODES = [
    NodeState("cpu", "ws1", Resources.of(8, 32 * G)),
    NodeState("gpu", "g1", Resources.of(48, 384 * G, {"a100": 4})),
    NodeState("gpu", "g2", Resources.of(48, 384 * G, {"h100": 2})),
]


def test_a_backend_that_reports_nothing_leaves_its_nodes_as_declared() -> None:
    assert schedulable(NODES, BACKENDS, {}) == (NODES, [])
    assert schedulable(NODES, BACKENDS, {"local": [], "slurm": []}) == (NODES, [])


def test_each_resource_is_the_smaller_of_declared_and_reported() -> None:
    reported = {
        "slurm": [
            # More CPUs than declared (never handed out), fewer GPUs (one is down).
            NodeCapacity("g1", Resources.of(64, 384 * G, {"a100": 3, "v100": 8})),
            NodeCapacity("g2", Resources.of(48, 384 * G, {"h100": 2})),
        ]
    }
    nodes, notes = schedulable(NODES, BACKENDS, reported)
    assert nodes == [
        NODES[0],
        NodeState("gpu", "g1", Resources.of(48, 384 * G, {"a100": 3}), NODES[1].capacity),
        NODES[2],
    ]
    assert notes == [
        "node g1 of pool gpu: the slurm backend reports 64 CPUs, 384G, 3× a100, 8× v100; "
        "scheduled with 48 CPUs, 384G, 3× a100 (declared: 48 CPUs, 384G, 4× a100)"
    ]


def test_a_node_its_backend_does_not_report_gets_nothing() -> None:
    reported = {"slurm": [NodeCapacity("g1", NODES[1].capacity)]}  # g2 drained
    nodes, notes = schedulable(NODES, BACKENDS, reported)
    assert nodes[2] == NodeState("gpu", "g2", Resources(), NODES[2].capacity)
    assert notes == [
        "node g2 of pool gpu: the slurm backend does not report it; nothing is scheduled on it"
    ]
    # What decides whether a workload can ever run is the node as declared: it waits.
    assert nodes[2].size == NODES[2].capacity and NODES[2].size == NODES[2].capacity


def test_a_backend_that_fails_to_report_reports_nothing() -> None:
    class Broken(FakeBackend):
        async def capacity(self) -> list[NodeCapacity]:
            raise OSError("sinfo: connection refused")

    node = NodeCapacity("ws1", Resources.of(2, G))
    found = asyncio.run(read_capacity({"local": FakeBackend(nodes=[node]), "slurm": Broken()}))
    assert found == {"local": [node]}
