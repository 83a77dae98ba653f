"""What the scheduler may hand out: the policy's nodes, as far as their backends have them.

The policy declares nodes; a backend reports what it can run on (``Backend.capacity``). A
backend that reports nothing leaves its pools' nodes as declared. One that reports nodes is
believed where it has less: each node is scheduled with the smaller of declared and reported,
resource by resource, and a node it does not report (a Slurm node drained or down) with
nothing. What a backend reports beyond the declaration is never handed out: the policy is the
administrator's word on what may be shared.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from allotment.backends.base import Backend, NodeCapacity
from allotment.domain.resources import Resources
from allotment.scheduler import NodeState

__all__ = ["read_capacity", "schedulable"]

log = logging.getLogger("allotment.controller")


def _smaller(declared: Resources, reported: Resources) -> Resources:
    gpus = {m: min(n, reported.gpus.get(m, 0)) for m, n in declared.gpus.items()}
    return Resources(
        min(declared.millicpus, reported.millicpus),
        min(declared.memory, reported.memory),
        {m: n for m, n in gpus.items() if n},
    )


def schedulable(
    nodes: Sequence[NodeState],
    backend_of: Mapping[str, str],
    reported: Mapping[str, Sequence[NodeCapacity]],
) -> tuple[list[NodeState], list[str]]:
    """The nodes to schedule with, and a sentence for each that differs from the policy.

    ``backend_of`` maps each pool to its backend's name; ``reported`` each backend's name to
    what its ``capacity()`` said (a backend missing, or reporting nothing, changes nothing).
    """
    out: list[NodeState] = []
    notes: list[str] = []
    for node in nodes:
        backend = backend_of.get(node.pool, "")
        seen = {n.name: n.resources for n in reported.get(backend, ())}
        if not seen:
            out.append(node)
            continue
        has = seen.get(node.name)
        capacity = Resources() if has is None else _smaller(node.capacity, has)
        if capacity != node.capacity:
            notes.append(
                f"node {node.name} of pool {node.pool}: the {backend} backend "
                + (
                    "does not report it; nothing is scheduled on it"
                    if has is None
                    else f"reports {has.describe()}; scheduled with {capacity.describe()} "
                    f"(declared: {node.capacity.describe()})"
                )
            )
        out.append(
            node
            if capacity == node.capacity
            else NodeState(node.pool, node.name, capacity, declared=node.capacity)
        )
    return out, notes


async def read_capacity(backends: Mapping[str, Backend]) -> dict[str, list[NodeCapacity]]:
    """Each backend's report; one that fails to answer reports nothing (its nodes stand)."""
    out: dict[str, list[NodeCapacity]] = {}
    for name, backend in backends.items():
        try:
            out[name] = await backend.capacity()
        except Exception as e:
            log.warning("the %s backend could not report its capacity: %s", name, e)
    return out
