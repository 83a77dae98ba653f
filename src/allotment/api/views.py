"""Rows to response bodies."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from allotment.config.models import ProfileSpec
from allotment.db.repository import WorkloadRow
from allotment.db.tables import Account, Pool, Profile, Workload
from allotment.domain.quantities import parse_bytes
from allotment.domain.submission import NewWorkload
from allotment.domain.workloads import WorkloadState
from allotment.schemas import (
    AccountOut,
    Kind,
    NodeOut,
    PoolOut,
    ProfileOut,
    State,
    WorkloadOut,
)

__all__ = ["account_out", "pool_out", "profile_out", "workload_out", "workload_out_of"]


def workload_out(row: WorkloadRow) -> WorkloadOut:
    w = row.workload
    return workload_out_of(w, w.id, row.user, row.account, row.pool, row.profile)


def workload_out_of(
    w: Workload | NewWorkload,
    workload_id: int,
    user: str,
    account: str,
    pool: str | None,
    profile: str | None,
) -> WorkloadOut:
    """A workload's response body, from its row or from the new workload just recorded: the
    one place that says which column answers which field."""
    return WorkloadOut.model_construct(
        id=workload_id,
        kind=cast(Kind, w.kind),
        name=w.name,
        user=user,
        account=account,
        pool=pool,
        profile=profile,
        cpus=w.millicpus / 1000,
        memory=w.memory,
        gpus=w.gpus,
        status=cast(State, WorkloadState(w.status).label),
        target=cast(State, WorkloadState(w.target).label),
        reason=w.reason,
        command=w.command,
        max_runtime=w.max_runtime,
        created_at=w.created_at,
        updated_at=w.updated_at,
        position=w.position,
        expected_start=w.expected_start,
        node=w.node,
        started_at=w.started_at,
        ended_at=w.ended_at,
        exit_code=w.exit_code,
        workdir=w.workdir,
        stdout=w.stdout,
        stderr=w.stderr,
        array_id=w.array_id,
        array_index=w.array_index,
        after=w.after_id,
        nodes=w.nodes,
        host=_host(w.placement),
    )


def _host(placement: Mapping[str, object] | None) -> str | None:
    """Where a running workload's server is reached, when its backend says (a session on a
    cluster's node); the rest of the placement is the controller's, not the user's."""
    host = (placement or {}).get("host")
    return host if isinstance(host, str) else None


def account_out(a: Account, parent_path: str | None) -> AccountOut:
    return AccountOut(
        path=a.path,
        name=a.name,
        parent=parent_path,
        shares=a.shares,
        description=a.description,
        archived=a.archived_at is not None,
        origin="api" if a.origin == "api" else "policy",
    )


def pool_out(p: Pool) -> PoolOut:
    spec: dict[str, Any] = p.spec
    return PoolOut(
        name=p.name,
        backend=p.backend,
        nodes=[
            NodeOut(name=n["name"], cpus=n["cpus"], memory=parse_bytes(n["memory"]), gpus=n["gpus"])
            for n in spec["nodes"]
        ],
        rates=spec["rates"],
        archived=p.archived_at is not None,
    )


def profile_out(p: Profile, pool: str) -> ProfileOut:
    spec = ProfileSpec.model_validate(p.spec)
    return ProfileOut(
        name=p.name,
        display_name=spec.display_name or p.name,
        description=spec.description,
        pool=pool,
        environment=spec.environment,
        cpus=spec.size.cpus,
        memory=spec.size.memory,
        gpus=spec.size.gpus if isinstance(spec.size.gpus, dict) else {},
        options={k: (v.model_dump() if v else None) for k, v in spec.options},
        whole_node=spec.whole_node,
        max_runtime=spec.max_runtime,
        priority=spec.priority,
    )
