"""`allot backup` and `allot restore`: the database of an installation, copied and put back.

Like `allot serve`, these run where the service runs, on its data directory and database
(found from the same defaults), not through the API: a restore must happen while no service
runs. The database and controller code is imported lazily, as `serve` does, so that the thin
client commands never load it.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from importlib import import_module
from pathlib import Path
from typing import Annotated, Any

import typer

from allotment.cli.admin import load_or_exit
from allotment.cli.output import console, fail

__all__ = ["backup", "register", "restore"]

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar="ALLOTMENT_CONFIG",
        help="The service's policy file (its service section names the data directory and "
        "database). Default: the same defaults as `allot serve`.",
    ),
]


def _settings(config: Path | None) -> Any:
    """The service's settings, exactly as `allot serve` finds them."""
    from allotment.config.models import Policy

    policy = load_or_exit(config) if config else Policy()
    return import_module("allotment.api.app").settings_from_policy(policy, apply=False)


def _shown(url: str) -> str:
    """A database URL without its password."""
    return url.split("@")[-1]


def backup(
    config: ConfigOption = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="The backup file to write (new; mode 0600: it holds token hashes). Default: "
            "allotment-<time>.sqlite (or .dump for PostgreSQL) in the current directory.",
        ),
    ] = None,
) -> None:
    """Copy the installation's database while the service runs.

    SQLite: the online backup API (consistent, whatever the service writes meanwhile), then
    checked. PostgreSQL: `pg_dump -Fc`, run for you when it is installed. Restore with
    `allot restore FILE`."""
    settings = _settings(config)
    copy = import_module("allotment.db.backup")
    path = copy.sqlite_file(settings.database_url)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    dest = output or Path(f"allotment-{stamp}.{'sqlite' if path else 'dump'}")
    try:
        if path is not None:
            copy.backup_sqlite(path, dest)
            summary = copy.summarise_sqlite(dest)
        else:
            copy.pg_dump(settings.database_url, dest, settings.data_dir)
            summary = _summary(settings.database_url)
    except copy.BackupError as e:
        fail(str(e))
    source = path if path is not None else _shown(settings.database_url)
    console.print(f"[green]Backed up[/] {source} to [bold]{dest}[/]", highlight=False)
    console.print(f"  it holds: {summary.describe()}", highlight=False, soft_wrap=True)


def _summary(url: str) -> Any:
    async def read() -> Any:
        engine_module = import_module("allotment.db.engine")
        copy = import_module("allotment.db.backup")
        db = engine_module.Database(url)
        try:
            return await db.run_read(lambda s: copy.summarise(s.connection()))
        finally:
            await db.dispose()

    return asyncio.run(read())


def restore(
    file: Annotated[Path, typer.Argument(help="A backup made by `allot backup`.")],
    config: ConfigOption = None,
) -> None:
    """Put a backup in place of the installation's database; the service must be stopped.

    The database it replaces is kept aside (renamed). Workloads the backup shows pending or
    running take what became of them since from that database and the backends: nothing runs
    twice, and no workload id is given out again."""
    if not file.is_file():
        fail(f"no backup at {file}")
    settings = _settings(config)
    clock = import_module("allotment.clock").SystemClock()
    restoring = import_module("allotment.controller.restore")
    lock = import_module("allotment.controller.lock")
    copy = import_module("allotment.db.backup")
    try:
        done = asyncio.run(
            restoring.restore(
                file.resolve(),
                settings.database_url,
                settings.data_dir,
                clock,
                installation=settings.installation,
            )
        )
    except (copy.BackupError, lock.NameInUse) as e:
        fail(str(e))
    console.print(
        f"[green]Restored[/] {file} into {_shown(settings.database_url)}", highlight=False
    )
    if done.aside is not None:
        console.print(f"  the database it replaced is kept as {done.aside}", highlight=False)
    console.print(f"  it holds: {done.summary.describe()}", highlight=False, soft_wrap=True)
    for wid, reason in {**done.reconciled.updated, **done.reconciled.unknown}.items():
        console.print(f"  workload {wid}: {reason}", highlight=False, soft_wrap=True)
    if done.reconciled.gone:
        console.print(
            f"  {len(done.reconciled.gone)} workloads submitted after the backup are not in it:",
            highlight=False,
        )
    for wid, what in done.reconciled.gone.items():
        console.print(f"  workload {wid}: {what}", highlight=False, soft_wrap=True)
    console.print(f"  new workloads are numbered from {done.reconciled.newest_id + 1}")


def register(app: typer.Typer) -> None:
    for command in (backup, restore):
        app.command()(command)
