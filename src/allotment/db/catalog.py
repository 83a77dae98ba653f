"""Stored pools and profiles as domain values."""

from __future__ import annotations

from allotment.config.models import PoolSpec, ProfileSpec
from allotment.db.tables import Pool, Profile
from allotment.domain.profiles import Node, ProfileOffer, Range
from allotment.domain.resources import Resources

__all__ = ["pool_nodes", "profile_offer", "profile_spec"]


def pool_nodes(pool: Pool) -> list[Node]:
    spec = PoolSpec.model_validate(pool.spec)
    return [Node(n.name, Resources.of(n.cpus, n.memory, n.gpus)) for n in spec.nodes]


def profile_spec(profile: Profile) -> ProfileSpec:
    return ProfileSpec.model_validate(profile.spec)


def profile_offer(profile: Profile) -> ProfileOffer:
    spec = profile_spec(profile)
    gpus = spec.size.gpus if isinstance(spec.size.gpus, dict) else {}
    ranges = {k: Range(v.min, v.max) for k, v in spec.options if v is not None}
    return ProfileOffer(profile.name, Resources.of(spec.size.cpus, spec.size.memory, gpus), ranges)
