"""`allot account …`: what managers change in their subtree (sub-accounts, members, shares)
and the audit log of those changes. `allot accounts` lists the tree."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Literal

import typer
from rich.table import Table

from allotment.cli.output import client, console, print_json, run
from allotment.cli.user import Json, Token, Url
from allotment.schemas import AccountCreate, AccountPatch

__all__ = ["account_app"]

account_app = typer.Typer(
    help="Manage accounts in your subtree: sub-accounts, members, shares, the audit log.",
    no_args_is_help=True,
)

Path = Annotated[str, typer.Argument(help="Account path (or name).")]
User = Annotated[str, typer.Argument(help="Hub user name.")]


@account_app.command()
def create(
    name: Annotated[str, typer.Argument(help="Its name: unique in the whole tree.")],
    parent: Annotated[str, typer.Option("--parent", "-p", help="The account it goes under.")],
    shares: Annotated[int, typer.Option(help="Fair-share weight among its siblings.")] = 1,
    description: Annotated[str, typer.Option(help="Shown in `allot accounts`.")] = "",
    url: Url = None,
    token: Token = None,
    json: Json = False,
) -> None:
    """Create a sub-account (you manage PARENT or an account above it)."""
    body = AccountCreate(name=name, parent=parent, shares=shares, description=description)
    with client(url, token) as c:
        a = run(partial(c.create_account, body))
    if json:
        return print_json(a)
    console.print(f"created {a.path} (shares {a.shares})")


@account_app.command()
def archive(path: Path, url: Url = None, token: Token = None, json: Json = False) -> None:
    """Archive a sub-account a manager created (removed when nothing refers to it)."""
    with client(url, token) as c:
        result = run(partial(c.archive_account, path))
    if json:
        return print_json(result)
    console.print(f"{result.path} {result.outcome}")


@account_app.command()
def members(path: Path, url: Url = None, token: Token = None, json: Json = False) -> None:
    """List an account's members, their roles and where each came from."""
    with client(url, token) as c:
        items = run(partial(c.members, path))
    if json:
        return print_json(items)
    table = Table("user", "role", "set by")
    for m in items:
        table.add_row(m.user, m.role, "policy file" if m.origin == "policy" else "a manager")
    console.print(table if items else "no members")


@account_app.command()
def add(
    path: Path,
    user: User,
    role: Annotated[
        Literal["member", "manager", "viewer"], typer.Option(help="What they may do there.")
    ] = "member",
    url: Url = None,
    token: Token = None,
    json: Json = False,
) -> None:
    """Add a user to an account (or change their role)."""
    with client(url, token) as c:
        m = run(partial(c.set_member, path, user, role))
    if json:
        return print_json(m)
    console.print(f"{m.user} is a {m.role} of {m.account}")


@account_app.command()
def remove(path: Path, user: User, url: Url = None, token: Token = None) -> None:
    """Remove a user a manager added from an account."""
    with client(url, token) as c:
        run(partial(c.remove_member, path, user))
    console.print(f"{user} removed from {path}")


@account_app.command()
def shares(
    path: Path,
    n: Annotated[int, typer.Argument(help="New fair-share weight (0: it only borrows).")],
    url: Url = None,
    token: Token = None,
    json: Json = False,
) -> None:
    """Set an account's shares (you manage an account above it)."""
    with client(url, token) as c:
        a = run(partial(c.update_account, path, AccountPatch(shares=n)))
    if json:
        return print_json(a)
    console.print(f"{a.path}: shares {a.shares}")


@account_app.command()
def audit(
    path: Annotated[
        str | None, typer.Argument(help="Account and subtree (default: all you manage).")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="At most this many (0: all).")] = 50,
    url: Url = None,
    token: Token = None,
    json: Json = False,
) -> None:
    """Who changed what, when, newest first (managers: their subtrees; admins: everything)."""
    with client(url, token) as c:
        items = run(lambda: c.audit(account=path, limit=limit or None))
    if json:
        return print_json(items)
    table = Table("when", "who", "what", "target", "before", "after")
    for e in items:
        table.add_row(
            e.at.strftime("%Y-%m-%d %H:%M:%S %Z"),
            e.actor,
            e.action,
            e.target,
            _values(e.before),
            _values(e.after),
        )
    console.print(table if items else "no audit entries")


def _values(values: dict[str, object] | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in (values or {}).items()) or "-"
