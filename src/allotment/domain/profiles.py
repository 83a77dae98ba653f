"""Turning a profile and a user's choices into a resource request.

A profile has a default size and, per resource, an optional range the user may choose from.
A request without a profile names a pool and a size directly; it must still fit one node.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from allotment.domain.resources import Resources

__all__ = ["Node", "ProfileOffer", "Range", "choose_size", "fits_some_node"]

GIB = 1024**3


@dataclass(frozen=True, slots=True)
class Range:
    min: float
    max: float


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    capacity: Resources


@dataclass(frozen=True, slots=True)
class ProfileOffer:
    name: str
    size: Resources
    #: Option name (``cpus``, ``memory_gib``, ``gpus``) → range; absent means fixed.
    ranges: Mapping[str, Range] = field(default_factory=dict)


def _pick(offer: ProfileOffer, key: str, asked: float | None, default: float, what: str) -> float:
    if asked is None or asked == default:
        return default
    rng = offer.ranges.get(key)
    if rng is None:
        raise ValueError(
            f"profile '{offer.name}' has a fixed {what} of {default:g}; "
            "leave it out or pick another profile"
        )
    if not rng.min <= asked <= rng.max:
        raise ValueError(
            f"profile '{offer.name}' allows {rng.min:g} to {rng.max:g} {what}; you asked for "
            f"{asked:g}"
        )
    return asked


def choose_size(
    offer: ProfileOffer,
    cpus: float | None = None,
    memory: int | None = None,
    gpus: int | None = None,
) -> Resources:
    """The resources of ``offer`` adjusted by the user's choices, within the offer's ranges."""
    chosen_cpus = _pick(offer, "cpus", cpus, offer.size.cpus, "CPUs")
    mem_gib = _pick(
        offer,
        "memory_gib",
        None if memory is None else memory / GIB,
        offer.size.memory / GIB,
        "GiB of memory",
    )
    size_gpus = dict(offer.size.gpus)
    if gpus is not None and gpus != offer.size.gpu_count:
        count = int(_pick(offer, "gpus", gpus, offer.size.gpu_count, "GPUs"))
        model = next(iter(size_gpus), None)
        if model is None and count:
            raise ValueError(f"profile '{offer.name}' has no GPU model to give you")
        size_gpus = {model: count} if model and count else {}
    return Resources.of(chosen_cpus, round(mem_gib * GIB), size_gpus)


def fits_some_node(request: Resources, nodes: Sequence[Node]) -> str | None:
    """None when the request fits on one node; else a message saying what would fit."""
    if any(request.fits_in(n.capacity) for n in nodes):
        return None
    biggest = max(nodes, key=lambda n: (n.capacity.gpu_count, n.capacity.millicpus))
    return (
        f"no node can ever run this: it asks for {request.describe()}; "
        f"the largest node ({biggest.name}) has {biggest.capacity.describe()}"
    )
