"""The slowly changing part of the database, as one immutable snapshot of domain values.

Accounts, pools and profiles change only when a policy is applied or a manager edits an
account, while every submission reads them; the API keeps a snapshot (see ``api.deps``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from allotment.config.models import PoolSpec, ProfileSpec
from allotment.db.tables import Account, Pool, Profile
from allotment.domain.profiles import Node, ProfileOffer, Range
from allotment.domain.resources import Resources

__all__ = ["AccountEntry", "Catalog", "PoolEntry", "ProfileEntry", "load_catalog"]


@dataclass(frozen=True, slots=True)
class AccountEntry:
    id: int
    name: str
    path: str
    archived: bool


@dataclass(frozen=True, slots=True)
class PoolEntry:
    id: int
    name: str
    nodes: tuple[Node, ...]
    #: The pool's ``backend:`` (``local``, ``slurm``).
    backend: str = "local"


@dataclass(frozen=True, slots=True)
class ProfileEntry:
    id: int
    name: str
    pool: PoolEntry
    spec: ProfileSpec
    offer: ProfileOffer
    #: Account paths the profile is offered to (and their subtrees); empty: everyone.
    accounts: tuple[str, ...]


@dataclass(frozen=True)
class Catalog:
    accounts_by_name: dict[str, AccountEntry] = field(default_factory=dict)
    accounts_by_path: dict[str, AccountEntry] = field(default_factory=dict)
    #: Active (not archived) pools and profiles only.
    pools: dict[str, PoolEntry] = field(default_factory=dict)
    profiles: dict[str, ProfileEntry] = field(default_factory=dict)

    def account(self, ref: str) -> AccountEntry | None:
        """An account by path, or by name when ``ref`` has no slash."""
        return (self.accounts_by_path if "/" in ref else self.accounts_by_name).get(ref)


def _offer(name: str, spec: ProfileSpec) -> ProfileOffer:
    gpus = spec.size.gpus if isinstance(spec.size.gpus, dict) else {}
    ranges = {k: Range(v.min, v.max) for k, v in spec.options if v is not None}
    return ProfileOffer(name, Resources.of(spec.size.cpus, spec.size.memory, gpus), ranges)


async def load_catalog(session: AsyncSession) -> Catalog:
    accounts = [
        AccountEntry(a.id, a.name, a.path, a.archived_at is not None)
        for a in (await session.execute(select(Account))).scalars()
    ]
    pools: dict[int, PoolEntry] = {}
    for p in (await session.execute(select(Pool).where(Pool.archived_at.is_(None)))).scalars():
        spec = PoolSpec.model_validate(p.spec)
        nodes = tuple(Node(n.name, Resources.of(n.cpus, n.memory, n.gpus)) for n in spec.nodes)
        pools[p.id] = PoolEntry(p.id, p.name, nodes, p.backend)
    profiles = {}
    rows = await session.execute(
        select(Profile).where(Profile.archived_at.is_(None)).order_by(Profile.id)
    )
    for prof in rows.scalars():
        if prof.pool_id not in pools:
            continue
        pspec = ProfileSpec.model_validate(prof.spec)
        profiles[prof.name] = ProfileEntry(
            prof.id,
            prof.name,
            pools[prof.pool_id],
            pspec,
            _offer(prof.name, pspec),
            tuple(pspec.accounts),
        )
    return Catalog(
        accounts_by_name={a.name: a for a in accounts},
        accounts_by_path={a.path: a for a in accounts},
        pools={p.name: p for p in pools.values()},
        profiles=profiles,
    )
