"""The quote before a launch: for each profile this caller may use on an account, what is free,
the expected wait and place, the cost per hour, and the budget and quota left."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Query

from allotment.api.deps import AppState, CallerDep, StateDep
from allotment.backends.slurm.quote import quotes_for
from allotment.backends.slurm.runner import SlurmRunner
from allotment.config.models import Policy
from allotment.controller.quote import BackendQuote, QuoteRequest, quote_profiles
from allotment.controller.view import load_live, load_policy_view
from allotment.db.catalog import ProfileEntry
from allotment.domain.accounts import is_within
from allotment.domain.resources import Resources
from allotment.domain.submission import charged_account
from allotment.errors import NotFound
from allotment.schemas import QuoteOut

__all__ = ["router"]

router = APIRouter(tags=["quote"])


@router.get("/quote", response_model=QuoteOut)
async def get_quote(
    caller: CallerDep,
    state: StateDep,
    account: Annotated[
        str | None, Query(description="Account to charge. Default: yours, else your only one.")
    ] = None,
    profile: Annotated[
        list[str] | None, Query(description="Only these profiles (repeat). Default: all yours.")
    ] = None,
) -> QuoteOut:
    """What starting each profile would cost and when it would start, charged to ``account``.

    The launch form shows this and asks again while it is open; `allot quote` prints it.
    """
    catalog = await state.catalog()
    spendable = caller.principal.spendable_accounts()
    if account is None and caller.default_account is None and len(spendable) > 1:
        account = spendable[0]
    charged = charged_account(catalog, caller, account)
    offered = [
        p
        for p in catalog.profiles.values()
        if not p.accounts or any(is_within(charged.path, a) for a in p.accounts)
    ]
    if profile:
        missing = set(profile) - {p.name for p in offered}
        if missing:
            raise NotFound(
                f"No profile {', '.join(sorted(missing))} is offered to account '{charged.path}'."
            )
        offered = [p for p in offered if p.name in profile]
    now = state.clock.now()
    async with state.db.read() as session:
        view = await session.run_sync(load_policy_view, state.policy_views)
        if view is None:
            raise NotFound("No policy has been applied yet, so there is nothing to launch.")
    # Slurm is asked with no transaction open: it may take up to `slurm.command_timeout`.
    placed = await _slurm_quotes(state, view.policy, offered)
    async with state.db.read() as session:
        live = await session.run_sync(load_live, view, now)
        quotes = await quote_profiles(
            session,
            view,
            live,
            [
                QuoteRequest(
                    p.name,
                    p.spec.display_name,
                    p.spec.description,
                    p.pool.name,
                    p.spec.environment,
                    p.offer.size,
                    float(p.spec.max_runtime) if p.spec.max_runtime else None,
                    p.spec.whole_node,
                )
                for p in offered  # in the policy's order: the administrator's
            ],
            charged.path,
            now,
            placed,
        )
    return QuoteOut(
        account=charged.path,
        accounts=spendable,
        currency=view.policy.currency,
        at=now,
        profiles=quotes,
    )


async def _runner(state: AppState, policy: Policy) -> SlurmRunner:
    """The Slurm backend's runner where this process runs one, else one of this process's
    own for the policy's cluster."""
    backend = await state.backend("slurm")
    runner = getattr(backend, "runner", None)
    if isinstance(runner, SlurmRunner):
        return runner
    spec = policy.slurm
    key = (spec.conf, spec.bin_dir, float(spec.command_timeout))
    if key not in _RUNNERS:
        _RUNNERS[key] = SlurmRunner(*key)
    return _RUNNERS[key]


_RUNNERS: dict[tuple[str | None, str | None, float], SlurmRunner] = {}


async def _slurm_quotes(
    state: AppState, policy: Policy, offered: Sequence[ProfileEntry]
) -> dict[str, BackendQuote]:
    """What Slurm says of each offered profile on a Slurm pool: the partition's free resources
    (``sinfo``) and its expected start (``sbatch --test-only``), asked concurrently and cached
    a few seconds (``backends.slurm.quote``)."""
    on_slurm = [p for p in offered if p.pool.backend == "slurm" and p.pool.name in policy.pools]
    if not on_slurm:
        return {}
    quotes = quotes_for(await _runner(state, policy))

    async def one(p: ProfileEntry) -> tuple[str, BackendQuote]:
        pool = policy.pools[p.pool.name]
        try:
            nodes = await quotes.nodes(pool.partition)
        except RuntimeError as e:
            return p.name, BackendQuote(Resources(), None, unavailable=str(e))
        free = Resources()
        for n in nodes:
            free = free + n.free
        size = p.offer.size
        if p.spec.whole_node and nodes:
            size = max((n.total for n in nodes), key=lambda c: (c.millicpus, c.memory))
        estimate = await quotes.estimate(
            partition=pool.partition,
            qos=pool.qos,
            size=size,
            walltime=float(p.spec.max_runtime) if p.spec.max_runtime else None,
        )
        return p.name, BackendQuote(free, estimate.start, refused=estimate.refused)

    return dict(await asyncio.gather(*(one(p) for p in on_slurm)))
