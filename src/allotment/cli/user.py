"""Commands for everyone: who am I, my accounts, pools, profiles, workloads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Annotated

import typer
from rich.table import Table
from rich.tree import Tree

from allotment.cli.output import client, console, fail, print_json, run
from allotment.domain.quantities import format_bytes, parse_duration

__all__ = ["register"]

Url = Annotated[str | None, typer.Option("--url", envvar="ALLOTMENT_URL", help="Service URL.")]
Token = Annotated[
    str | None, typer.Option("--token", help="API token (default: $ALLOTMENT_TOKEN).")
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _gpus(gpus: dict[str, int]) -> str:
    return ", ".join(f"{n}× {m}" for m, n in gpus.items()) or "-"


def whoami(url: Url = None, token: Token = None, json: Json = False) -> None:
    """Show who you are to Allotment: scopes and memberships."""
    with client(url, token) as c:
        me = run(c.me)
    if json:
        return print_json(me)
    console.print(f"[bold]{me.name}[/]" + (" (administrator)" if me.admin else ""))
    console.print("scopes: " + ", ".join(me.scopes))
    if me.default_account:
        console.print(f"default account: {me.default_account}")
    own = {m.account for m in me.memberships if m.user == me.name}
    for m in me.memberships:
        if m.user == me.name:
            console.print(f"  {m.role:8} {m.account}")
        elif m.account not in own:  # the policy's `members: ["*"]`
            console.print(f"  {m.role:8} {m.account} (as every user is)")
    if not me.memberships:
        console.print("  (no memberships yet: ask a lab manager to add you)")


def accounts(
    url: Url = None,
    token: Token = None,
    json: Json = False,
    archived: Annotated[bool, typer.Option(help="Include archived accounts.")] = False,
) -> None:
    """Show the accounts you can see, as a tree."""
    with client(url, token) as c:
        items = run(lambda: c.accounts(archived=archived))
    if json:
        return print_json(items)
    roots: dict[str, Tree] = {}
    top = Tree("[bold]accounts[/]")
    for a in items:  # tree order: parents come first
        label = f"[bold]{a.name}[/] shares={a.shares}" + (
            " [dim](archived)[/]" if a.archived else ""
        )
        if a.description:
            label += f"  [dim]{a.description}[/]"
        parent = roots.get(a.parent) if a.parent else None
        roots[a.path] = (parent or top).add(label)
    console.print(top if items else "no accounts you can see")


def pools(url: Url = None, token: Token = None, json: Json = False) -> None:
    """Show the pools of capacity and their nodes, with each node's state where its backend
    reports one (a drained or down node with the reason)."""
    with client(url, token) as c:
        items = run(c.pools)
    if json:
        return print_json(items)
    table = Table("pool", "backend", "node", "cpus", "memory", "gpus", "state")
    for p in items:
        for n in p.nodes:
            table.add_row(
                p.name,
                p.backend,
                n.name,
                f"{n.cpus:g}",
                format_bytes(n.memory),
                _gpus(n.gpus),
                _state(n.state, n.reason),
            )
    console.print(table)


def _state(state: str | None, reason: str | None) -> str:
    """A node's state as its backend reports it, with the reason a drained or down node was
    taken out ("drained: disk replaced"); "-" where the backend reports none."""
    if not state:
        return "-"
    return f"{state}: {reason}" if reason else state


def profiles(url: Url = None, token: Token = None, json: Json = False) -> None:
    """Show the profiles you may launch."""
    with client(url, token) as c:
        items = run(c.profiles)
    if json:
        return print_json(items)
    table = Table("profile", "pool", "cpus", "memory", "gpus", "max runtime", "title")
    for p in items:
        table.add_row(
            p.name,
            p.pool,
            f"{p.cpus:g}",
            format_bytes(p.memory),
            _gpus(p.gpus),
            f"{p.max_runtime // 3600}h",
            p.display_name,
        )
    console.print(table)


def workloads(
    url: Url = None,
    token: Token = None,
    json: Json = False,
    state: Annotated[
        list[str] | None, typer.Option("--state", "-s", help="Only these states (repeatable).")
    ] = None,
    account: Annotated[
        str | None, typer.Option("--account", "-A", help="Account and subtree.")
    ] = None,
    user: Annotated[str | None, typer.Option("--user", "-u", help="Only this user's.")] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Created within this long ago (e.g. 2h, 7d) or since an ISO time."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="At most this many (0: all).")] = 50,
) -> None:
    """List the workloads you can see, newest first."""
    since_at = _since(since) if since else None
    with client(url, token) as c:
        items = run(
            lambda: c.workloads(
                status=state, account=account, user=user, since=since_at, limit=limit or None
            )
        )
    if json:
        return print_json(items)
    table = Table(
        "id", "kind", "user", "account", "profile", "cpus", "memory", "gpus", "state", "reason"
    )
    for w in items:
        table.add_row(
            str(w.id),
            w.kind,
            w.user,
            w.account,
            w.profile or w.pool or "-",
            f"{w.cpus:g}",
            format_bytes(w.memory),
            _gpus(w.gpus),
            w.status,
            w.reason,
        )
    console.print(table if items else "no workloads")


def _since(text: str) -> datetime:
    try:
        return datetime.now(UTC) - timedelta(seconds=parse_duration(text))
    except ValueError:
        pass
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        fail(f"--since {text!r}: give a duration such as 2h or 7d, or an ISO time")
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def cancel(
    ids: Annotated[list[int], typer.Argument(help="Workload ids.")],
    url: Url = None,
    token: Token = None,
) -> None:
    """Cancel workloads: pending ones stop at once, running ones are told to stop."""
    with client(url, token) as c:
        for i in ids:
            w = run(partial(c.cancel, i))
            console.print(f"{w.id}: {w.status} ({w.reason})")


def register(app: typer.Typer) -> None:
    for command in (whoami, accounts, pools, profiles, workloads, cancel):
        app.command()(command)
