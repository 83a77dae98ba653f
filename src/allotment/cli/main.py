"""Entry point of `allot`."""

from __future__ import annotations

import typer

from allotment import __version__
from allotment.cli import backup, jobs, usage, user
from allotment.cli.account import account_app
from allotment.cli.admin import config_app
from allotment.cli.budget import budget_app
from allotment.cli.dask import dask_app
from allotment.cli.serve import serve
from allotment.cli.simulate import simulate
from allotment.cli.up import up

__all__ = ["app", "main"]

app = typer.Typer(
    name="allot",
    help="Allotment: fair, visible, self-service shared research computers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
app.add_typer(config_app, name="config")
app.add_typer(account_app, name="account")
app.add_typer(budget_app, name="budget")
app.add_typer(dask_app, name="dask")
user.register(app)
jobs.register(app)
backup.register(app)
usage.register(app)
app.command()(simulate)
app.command()(up)
app.command()(serve)


@app.command()
def version() -> None:
    """Print Allotment's version."""
    typer.echo(__version__)


def main() -> None:
    app()
