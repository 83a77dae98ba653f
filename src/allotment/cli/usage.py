"""`allot usage`: what was spent and used, grouped, as a table, CSV or JSON."""

from __future__ import annotations

import csv
import sys
from decimal import Decimal
from typing import Annotated, Literal

import typer
from rich.table import Table

from allotment.cli.output import client, console, print_json, run
from allotment.cli.user import Token, Url
from allotment.schemas import UsageReportOut, UsageRowOut

__all__ = ["register"]

By = Literal["user", "account", "profile", "pool", "day", "week"]
Format = Literal["table", "csv", "json"]
COLUMNS = [
    "cost",
    "cost_micros",
    "cpu_hours",
    "memory_gib_hours",
    "gpu_hours",
    "used_cpu_hours",
    "efficiency",
]


def money(micros: int) -> str:
    """``1,000.00``: exact from the micros (a float could round a half cent either way)."""
    return f"{(Decimal(micros) / 1_000_000).quantize(Decimal('0.01')):,}"


def _hours(h: float) -> str:
    return f"{h:,.1f}"


def _efficiency(e: float | None) -> str:
    return "-" if e is None else f"{e:.0%}"


def _table(report: UsageReportOut) -> Table:
    scope = report.account or ("all accounts" if report.user is None else "")
    who = f" of {report.user}" if report.user else ""
    title = (
        f"Usage{who}{' in ' + scope if scope else ''}, {report.first_day} to "
        f"{report.last_day} ({report.time_zone})"
    )
    table = Table(
        report.by,
        f"cost ({report.currency})",
        "CPU-h",
        "GiB-h",
        "GPU-h",
        "used CPU-h",
        "efficiency",
        title=title,
        show_footer=True,
    )
    for column, value in zip(table.columns, _cells(report.total), strict=True):
        column.footer = value
    for row in report.items:
        table.add_row(*_cells(row))
    return table


def _cells(row: UsageRowOut) -> list[str]:
    return [
        row.key,
        money(row.cost_micros),
        _hours(row.cpu_hours),
        _hours(row.memory_gib_hours),
        _hours(row.gpu_hours),
        _hours(row.used_cpu_hours),
        _efficiency(row.efficiency),
    ]


def _csv(report: UsageReportOut) -> None:
    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow([report.by, *COLUMNS])
    for row in [*report.items, report.total]:
        values = row.model_dump()
        out.writerow(
            [row.key, f"{Decimal(row.cost_micros) / 1_000_000:f}"]
            + ["" if values[c] is None else values[c] for c in COLUMNS[1:]]
        )


def usage(
    url: Url = None,
    token: Token = None,
    account: Annotated[
        str | None, typer.Option("--account", "-A", help="Only this account and its subtree.")
    ] = None,
    user: Annotated[str | None, typer.Option("--user", "-u", help="Only this user's.")] = None,
    since: Annotated[
        str | None,
        typer.Option(help="30d (today and the 29 days before) or a first day, 2026-11-01."),
    ] = None,
    period: Annotated[
        str | None,
        typer.Option(help="A year (2026), quarter (2026-Q4), month (2026-12) or day."),
    ] = None,
    by: Annotated[By, typer.Option("--by", help="What the rows are.")] = "account",
    format: Annotated[Format, typer.Option("--format", "-f", help="How to print it.")] = "table",
) -> None:
    """Show what was spent and used: yours by default (an administrator's: everyone's); an
    account's and its subtree's with --account. Days start in the site's time zone; the last
    30 days unless --since or --period says otherwise."""
    with client(url, token) as c:
        report = run(lambda: c.usage(account=account, user=user, since=since, period=period, by=by))
    if format == "json":
        return print_json(report)
    if format == "csv":
        return _csv(report)
    console.print(
        _table(report) if report.items else f"no usage from {report.first_day} to {report.last_day}"
    )


def register(app: typer.Typer) -> None:
    app.command()(usage)
