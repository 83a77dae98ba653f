"""The policy in force, and applying a new one (admins only)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy import select

from allotment.api.deps import AppState, CallerDep, StateDep
from allotment.backends.slurm.backend import slurm_configured
from allotment.backends.slurm.mirror import SINFO_FORMAT, pool_drift
from allotment.backends.slurm.runner import SlurmError, SlurmUnavailable
from allotment.config import parse_policy, rules
from allotment.config.models import Policy
from allotment.controller.slurm_mirror import (
    Inputs,
    apply,
    mirrored,
    owner_tag,
    read_inputs,
    runner_for,
    slurm_plan,
)
from allotment.db.policy_sync import apply_policy, identity_warnings
from allotment.db.tables import PolicyVersion
from allotment.errors import ConfigError, Forbidden, InvalidRequest, NotFound
from allotment.installation import installation_of
from allotment.schemas import ApplyResult, PolicyIn

__all__ = ["router"]

router = APIRouter(tags=["policy"])


#: At most this many ``sacctmgr`` commands run within an apply's request (each takes ~0.5 s);
#: more are left to the controller's mirror, which runs them in the background.
INLINE_CHANGES = 40


class _DryRun(Exception):
    """Raised inside the write session to roll a dry run back."""


@router.get("/policy")
async def get_policy(caller: CallerDep, state: StateDep) -> dict[str, Any]:
    """The newest applied policy (without `service`, which is the host's business)."""
    if not caller.principal.is_admin:
        raise Forbidden("Only administrators may read the whole policy.")
    async with state.db.read() as session:
        latest = (
            await session.execute(select(PolicyVersion).order_by(PolicyVersion.id.desc()).limit(1))
        ).scalar_one_or_none()
    if latest is None:
        raise NotFound("No policy has been applied yet; run `allot config apply FILE`.")
    return {"version": latest.id, "applied_at": latest.applied_at, "document": latest.document}


@router.put("/policy", response_model=ApplyResult)
async def put_policy(body: PolicyIn, caller: CallerDep, state: StateDep) -> ApplyResult:
    """Check a policy and make the database match it; never deletes history."""
    if not caller.principal.is_admin:
        raise Forbidden("Only administrators may apply a policy.")
    try:
        policy = parse_policy(body.text, body.filename, environ={})
    except ConfigError as e:
        raise InvalidRequest("The policy has problems:\n" + str(e)) from None
    changes: list[str] = []
    warnings: list[str] = []
    inputs: Inputs | None = None
    try:
        async with state.db.write() as session:
            version, changes = await apply_policy(
                session, policy, actor=caller.name, now=state.clock.now()
            )
            warnings = await identity_warnings(session, policy)
            if slurm_configured(policy):
                warnings += rules.advice(policy)  # what Slurm pools need of the site
            if mirrored(policy):
                # What the database would hold, read inside the apply (a dry run included).
                inputs = await session.run_sync(read_inputs, policy)
            if body.dry_run:
                raise _DryRun
    except _DryRun:
        slurm, more = await _mirror(state, inputs, run=False)
        return ApplyResult(version=None, changes=changes + slurm, warnings=warnings + more)
    state.changed()
    slurm, more = await _mirror(state, inputs, run=True)
    return ApplyResult(version=version, changes=changes + slurm, warnings=warnings + more)


def _owner(state: AppState) -> str:
    name = installation_of(state.installation, state.data_dir) if state.data_dir else "allotment"
    return owner_tag(name)


async def _mirror(
    state: AppState, inputs: Inputs | None, *, run: bool
) -> tuple[list[str], list[str]]:
    """Slurm's side of an apply: the ``sacctmgr`` changes it needs (made, unless ``run`` is
    False), as ``slurm: …`` lines, and a warning where Slurm cannot be asked now (the
    controller's mirror makes them when it answers)."""
    if inputs is None or not slurm_configured(inputs.policy):
        return [], []  # no Slurm here: its pools wait, nothing to mirror
    runner = runner_for(inputs.policy)
    later: list[str] = []
    try:
        changes, _, _ = await slurm_plan(inputs, runner, _owner(state))
        commands = [c for c in changes if c.argv]
        mirror = state.controller.slurm_mirror if state.controller is not None else None
        if run and len(commands) <= INLINE_CHANGES and mirror is not None:
            done = await mirror.sync_once()  # the controller's own pass: never two at once
        elif run and len(commands) <= INLINE_CHANGES:
            done, _ = await apply(runner, changes)
        else:
            done = [line for c in commands for line in c.lines]
            if run:
                later.append(
                    f"slurm: {len(commands)} sacctmgr commands to run: the controller's mirror "
                    "runs them within a minute (`allot config check --slurm` shows what is left)"
                )
    except (SlurmUnavailable, SlurmError) as e:
        return [], [f"Slurm's accounts are not mirrored yet ({e}); they will be when it answers"]
    conflicts = [c.line for c in changes if not c.argv]
    return [f"slurm: {line}" for line in done], [f"slurm: {x}" for x in conflicts] + later


class SlurmDrift(BaseModel):
    """Where Slurm differs from the policy in force."""

    cluster: str = Field(description="Slurm's ClusterName.")
    accounts: list[str] = Field(
        description="What mirroring would change in Slurm's accounts, users and limits "
        "(made by hand in Slurm, or not mirrored yet); empty when they match."
    )
    conflicts: list[str] = Field(description="What Allotment may not change: fix by hand.")
    pools: list[str] = Field(
        description="Where the policy's Slurm pools and Slurm's partitions and nodes disagree."
    )
    in_sync: bool = Field(description="True when all three are empty.")


@router.get("/policy/slurm", response_model=SlurmDrift)
async def slurm_drift(caller: CallerDep, state: StateDep) -> SlurmDrift:
    """Drift between the policy in force and Slurm (`allot config check --slurm`)."""
    if not caller.principal.is_admin:
        raise Forbidden("Only administrators may compare the policy with Slurm.")
    async with state.db.read() as session:
        inputs = await session.run_sync(read_inputs)
    if inputs is None:
        raise NotFound("No policy has been applied yet; run `allot config apply FILE`.")
    policy: Policy = inputs.policy
    if not any(p.backend == "slurm" for p in policy.pools.values()):
        raise InvalidRequest("The policy in force has no Slurm pool.")
    runner = runner_for(policy)
    try:
        changes, want, _ = await slurm_plan(inputs, runner, _owner(state))
        sinfo = await runner.run(["sinfo", "-h", "-N", "-o", SINFO_FORMAT])
    except (SlurmUnavailable, SlurmError) as e:
        raise InvalidRequest(f"Slurm could not be asked: {e}") from None
    accounts = [line for c in changes if c.argv for line in c.lines] if policy.slurm.mirror else []
    conflicts = [c.line for c in changes if not c.argv] if policy.slurm.mirror else []
    pools = pool_drift(policy, sinfo.stdout.decode())
    return SlurmDrift(
        cluster=want.cluster,
        accounts=accounts,
        conflicts=conflicts,
        pools=pools,
        in_sync=not (accounts or conflicts or pools),
    )
