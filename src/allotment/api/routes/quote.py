"""The quote before a launch: for each profile this caller may use on an account, what is free,
the expected wait and place, the cost per hour, and the budget and quota left."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from allotment.api.deps import CallerDep, StateDep
from allotment.controller.quote import QuoteRequest, quote_profiles
from allotment.controller.view import load_live, load_policy_view
from allotment.domain.accounts import is_within
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
        )
    return QuoteOut(
        account=charged.path,
        accounts=spendable,
        currency=view.policy.currency,
        at=now,
        profiles=quotes,
    )
