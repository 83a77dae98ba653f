"""Usage: resource-seconds decayed with a half-life, reduced to one dominant number.

A pool's capacity normalises each kind, so that an hour of a whole GPU node and an hour of all
its CPUs weigh the same; the dominant share of a usage vector is its largest normalised part.
"""

from __future__ import annotations

from allotment.domain.resources import Resources

__all__ = ["decay_factor", "dominant_share", "subtract"]


def subtract(a: Resources, b: Resources) -> Resources:
    """a − b per kind; may go below zero (free capacity of an overcommitted node)."""
    gpus = dict(a.gpus)
    for m, n in b.gpus.items():
        gpus[m] = gpus.get(m, 0) - n
    return Resources(a.millicpus - b.millicpus, a.memory - b.memory, gpus)


def decay_factor(elapsed: float, half_life: float) -> float:
    """What is left of 1 unit of usage after ``elapsed`` seconds; 1 when there is no decay."""
    if half_life <= 0 or elapsed <= 0:
        return 1.0
    return float(0.5 ** (elapsed / half_life))


def dominant_share(used: Resources, capacity: Resources) -> float:
    """max over kinds of used / capacity; kinds the pool lacks are ignored."""
    shares = []
    if capacity.millicpus:
        shares.append(used.millicpus / capacity.millicpus)
    if capacity.memory:
        shares.append(used.memory / capacity.memory)
    for model, n in used.gpus.items():
        have = capacity.gpus.get(model, 0)
        if have:
            shares.append(n / have)
    return max(shares, default=0.0)
