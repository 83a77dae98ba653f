"""`allot dask list|show|scale|stop`: your Dask clusters from a terminal (made in notebooks or
scripts with ``allotment.dask.AllotmentCluster``)."""

from __future__ import annotations

from functools import partial
from typing import Annotated

import typer
from rich.table import Table

from allotment.cli.output import client, console, print_json, run
from allotment.cli.user import Json, Token, Url
from allotment.domain.quantities import format_bytes
from allotment.schemas import DaskClusterOut

__all__ = ["dask_app"]

dask_app = typer.Typer(
    help="Dask clusters: list, show, scale and stop yours.", no_args_is_help=True
)

Name = Annotated[str, typer.Argument(help="The cluster's name.")]


def _workers(c: DaskClusterOut) -> str:
    """Running against asked for, with those waiting: "2/8 (6 requested)"."""
    text = f"{c.running}/{c.workers}"
    if c.requested:
        text += f" ({c.requested} requested)"
    return text + (f" adapt {c.adapt.minimum}-{c.adapt.maximum}" if c.adapt else "")


def _size(c: DaskClusterOut) -> str:
    w = c.worker
    return f"{w.cpus:g} cpu, {format_bytes(w.memory)}" + (f", {w.gpus} gpu" if w.gpus else "")


def _why(c: DaskClusterOut) -> str:
    if c.reason:
        return c.reason
    if c.requested and c.waiting_reason:
        eta = f" (~{c.expected_start:%H:%M})" if c.expected_start else ""
        return c.waiting_reason + eta
    return ""


@dask_app.command("list")
def list_(
    ended: Annotated[bool, typer.Option("--ended", help="Also those that have ended.")] = False,
    user: Annotated[
        str | None, typer.Option("--user", "-u", help="Someone else's (administrators).")
    ] = None,
    url: Url = None,
    token: Token = None,
    json: Json = False,
) -> None:
    """Your Dask clusters: state, workers running of those asked for, size, cost per hour."""
    with client(url, token) as c:
        items = run(partial(c.dask_clusters, ended=ended, user=user))
    if json:
        return print_json(items)
    table = Table("name", "state", "workers", "each worker", "account", "cost/h", "reason")
    for k in items:
        table.add_row(
            k.name,
            k.state,
            _workers(k),
            _size(k),
            k.account,
            f"{k.cost_per_hour:.2f} {k.currency}",
            _why(k),
        )
    console.print(table if items else "no Dask clusters")


def _print(k: DaskClusterOut) -> None:
    lines = [
        ("cluster", f"{k.name} (id {k.id}, {k.user})"),
        ("state", k.state + (f": {k.reason}" if k.reason else "")),
        ("workers", _workers(k)),
        ("each worker", f"{_size(k)}, {k.worker.threads} threads"),
        ("account", f"{k.account} (profile {k.profile})"),
        ("cost", f"{k.cost_per_hour:.2f} {k.currency}/h"),
    ]
    if k.requested and k.waiting_reason:
        lines.append(("waiting", _why(k)))
    if k.address:
        lines.append(("scheduler", k.address))
    if k.dashboard_link:
        lines.append(("dashboard", k.dashboard_link))
    if k.session is not None:
        lines.append(("session", str(k.session)))
    lines.append(("on close", "stops" if k.shutdown_on_close else "keeps running"))
    if k.idle_since:
        lines.append(("idle since", f"{k.idle_since:%Y-%m-%d %H:%M} UTC"))
    width = max(len(label) for label, _ in lines)
    for label, text in lines:
        console.print(f"{label:<{width}}  {text}", highlight=False, soft_wrap=True)


@dask_app.command()
def show(name: Name, url: Url = None, token: Token = None, json: Json = False) -> None:
    """One cluster: state, workers and why those asked for wait, scheduler, dashboard."""
    with client(url, token) as c:
        k = run(partial(c.dask_cluster, name))
    if json:
        return print_json(k)
    _print(k)


@dask_app.command()
def scale(
    name: Name,
    workers: Annotated[int, typer.Argument(help="Workers to run (ends adaptive scaling).")],
    url: Url = None,
    token: Token = None,
    json: Json = False,
) -> None:
    """Ask for a number of workers; those that do not fit wait in the queue."""
    with client(url, token) as c:
        k = run(partial(c.scale_dask_cluster, name, workers))
    if json:
        return print_json(k)
    console.print(f"{k.name}: {_workers(k)} workers", highlight=False)


@dask_app.command()
def stop(name: Name, url: Url = None, token: Token = None, json: Json = False) -> None:
    """Stop a cluster: its workers, then its scheduler."""
    with client(url, token) as c:
        k = run(partial(c.stop_dask_cluster, name))
    if json:
        return print_json(k)
    console.print(f"{k.name}: {k.state}" + (f" ({k.reason})" if k.reason else ""))
