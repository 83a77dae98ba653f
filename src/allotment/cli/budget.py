"""`allot budget …`: the budgets you can see, with what each spent this period, and a
manager's budget for an account below theirs."""

from __future__ import annotations

from functools import partial
from typing import Annotated

import typer
from rich.table import Table

from allotment.cli.output import client, console, print_json, run
from allotment.cli.user import Json, Token, Url
from allotment.schemas import BudgetIn, BudgetOut

__all__ = ["budget_app"]

budget_app = typer.Typer(
    help="Budgets: what each account may spend per period, and what it has spent.",
    no_args_is_help=True,
)


def _money(x: float, currency: str) -> str:
    return f"{x:,.2f} {currency}"


def _row(b: BudgetOut) -> list[str]:
    state = "held: spent" if b.blocked else ("alerts only" if not b.hard_stop else "")
    return [
        b.account,
        b.pool or "all pools",
        b.period,
        _money(b.amount, b.currency),
        _money(b.spent, b.currency),
        _money(b.left, b.currency),
        f"{b.fraction:.0%}",
        "a manager" if b.origin == "api" else "policy file",
        state,
    ]


@budget_app.command()
def show(
    account: Annotated[
        str | None,
        typer.Option("--account", "-a", help="Only the budgets over this account."),
    ] = None,
    url: Url = None,
    token: Token = None,
    json: Json = False,
) -> None:
    """List the budgets you can see, with what each spent in its current period."""
    with client(url, token) as c:
        items = run(partial(c.budgets, account=account))
    if json:
        return print_json(items)
    table = Table("account", "pool", "period", "amount", "spent", "left", "used", "set by", "")
    for b in items:
        table.add_row(*_row(b))
    console.print(table if items else "no budgets")
    for b in items:
        if b.reason:
            console.print(f"{b.account}: {b.reason}")


@budget_app.command("set")
def set_(
    account: Annotated[str, typer.Argument(help="Account path (or name).")],
    amount: Annotated[float, typer.Option(help="Spending limit per period, in the currency.")],
    pool: Annotated[
        str | None, typer.Option(help="Limit one pool. Default: across all pools.")
    ] = None,
    period: Annotated[
        str, typer.Option(help="day, week, month, quarter, year, or Nd (the last N days).")
    ] = "month",
    hard_stop: Annotated[
        bool, typer.Option(help="At 100 %: hold new work and stop running work.")
    ] = True,
    grace: Annotated[str, typer.Option(help="Warning before running work is stopped.")] = "15m",
    step_down: Annotated[
        str | None, typer.Option(help="Profile running work steps down to instead of stopping.")
    ] = None,
    overdraft: Annotated[float, typer.Option(help="How much beyond the amount.")] = 0.0,
    url: Url = None,
    token: Token = None,
    json: Json = False,
) -> None:
    """Set an account's budget: you manage an account above it (and give it no more than
    your own has), or you are an administrator."""
    body = BudgetIn(
        amount=amount,
        period=period,
        hard_stop=hard_stop,
        grace=grace,
        step_down=step_down,
        overdraft=overdraft,
    )
    with client(url, token) as c:
        b = run(partial(c.set_budget, account, body, pool=pool))
    if json:
        return print_json(b)
    console.print(
        f"{b.account} ({b.pool or 'all pools'}): {_money(b.amount, b.currency)} per "
        f"{b.period}; {_money(b.spent, b.currency)} spent, {_money(b.left, b.currency)} left"
    )
