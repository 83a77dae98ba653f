"""`allot config …`: check, show and apply the policy file."""

from __future__ import annotations

import json as jsonlib
from pathlib import Path
from typing import Annotated

import typer
from ruamel.yaml import YAML

from allotment.cli.output import client, console, err, fail, print_json, run
from allotment.client import AllotmentClient, ApiError, discover, search_path
from allotment.config import load_policy
from allotment.config.models import Policy
from allotment.errors import ConfigError

__all__ = ["config_app", "load_or_exit"]

config_app = typer.Typer(help="Check, show and apply the policy file (allotment.yaml).")
FileArg = Annotated[Path, typer.Argument(help="Policy file.", dir_okay=False)]
Url = Annotated[str | None, typer.Option("--url", envvar="ALLOTMENT_URL", help="Service URL.")]
Token = Annotated[str | None, typer.Option("--token", help="Admin or hub token.")]


def load_or_exit(file: Path) -> Policy:
    try:
        return load_policy(file)
    except ConfigError as e:
        for p in e.problems:
            err.print(str(p), highlight=False, markup=False)
        n = len(e.problems)
        fail(f"{file}: {n} problem{'s' if n != 1 else ''}", code=2)


@config_app.command()
def check(
    file: Annotated[Path | None, typer.Argument(help="Policy file.", dir_okay=False)] = None,
    slurm: Annotated[
        bool,
        typer.Option(
            "--slurm",
            help="Also compare the policy in force with Slurm: accounts, users and limits "
            "changed by hand or not mirrored yet, partitions and nodes that differ. Exit "
            "code 1 when they differ.",
        ),
    ] = False,
    url: Url = None,
    token: Token = None,
) -> None:
    """Validate a policy file; list every problem with its line. Exit code 2 when invalid.

    Where a running service can be reached (``$ALLOTMENT_URL`` and a token, or a local
    service's admin token), also say what the file would change that may not be meant, from
    what the service's database holds (a dry run: nothing is changed)."""
    if file is None and not slurm:
        fail("give a policy file to check, or --slurm to compare the policy in force with Slurm")
    if file is not None:
        policy = load_or_exit(file)
        console.print(
            f"[green]{file} is valid[/]: {len(policy.accounts)} accounts, "
            f"{len(policy.pools)} pools, {len(policy.profiles)} profiles, "
            f"{len(policy.allocations)} allocations."
        )
        env_url, env_token = discover(search_path())
        if token or env_token:
            try:
                with AllotmentClient(url or env_url, token or env_token) as c:
                    result = c.apply_policy(file.read_text(), str(file), dry_run=True)
                _warn(result.warnings)
            except ApiError:
                pass  # no service here, or not one this token administers: the file is valid
    if slurm:
        _check_slurm(url, token)


def _check_slurm(url: str | None, token: str | None) -> None:
    """Print where Slurm differs from the policy in force; exit 1 when it does."""
    with client(url, token) as c:
        drift = run(c.slurm_drift)
    sections = (
        ("accounts", "Slurm's accounts differ (the mirror makes these changes):"),
        ("conflicts", "Allotment may not change these (fix them in Slurm):"),
        ("pools", "the policy's Slurm pools and Slurm's partitions differ:"),
    )
    for key, title in sections:
        if drift[key]:
            console.print(f"[yellow]{title}[/]")
            for line in drift[key]:
                console.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)
    if not drift["in_sync"]:
        raise typer.Exit(1)
    console.print(f"[green]Slurm cluster {drift['cluster']} matches the policy in force[/]")


def _warn(warnings: list[str]) -> None:
    for warning in warnings:
        err.print(f"warning: {warning}", highlight=False, markup=False, soft_wrap=True)


@config_app.command()
def show(
    file: Annotated[
        Path | None, typer.Argument(help="Policy file; omit to ask the service.")
    ] = None,
    json: Annotated[bool, typer.Option("--json", help="Print JSON instead of YAML.")] = False,
    url: Url = None,
    token: Token = None,
) -> None:
    """Print the effective policy: a file with every default filled in, or the one in force."""
    if file is not None:
        data = load_or_exit(file).model_dump(mode="json")
        if data["service"].get("database_url"):
            data["service"]["database_url"] = "<set>"  # may carry a password
    else:
        with client(url, token) as c:
            data = run(c.policy)["document"]
    if json:
        print_json(data)
    else:
        import sys

        YAML(typ="safe", pure=True).dump(data, sys.stdout)


@config_app.command()
def apply(
    file: FileArg,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would change.")] = False,
    url: Url = None,
    token: Token = None,
) -> None:
    """Check a policy file and sync it into the running service; prints what changed."""
    load_or_exit(file)  # fail early, with the same messages, before talking to the service
    with client(url, token) as c:
        result = run(lambda: c.apply_policy(file.read_text(), str(file), dry_run=dry_run))
    for change in result.changes:
        console.print(change, highlight=False, markup=False)
    _warn(result.warnings)
    if not result.changes:
        console.print("no changes")
    elif dry_run:
        console.print("[yellow]dry run: nothing was changed[/]")
    else:
        console.print(f"policy version {result.version} is in force")


@config_app.command()
def schema() -> None:
    """Print the JSON schema of the policy file (for editors and CI)."""
    typer.echo(jsonlib.dumps(Policy.model_json_schema(mode="validation"), indent=2))


@config_app.command()
def reference(
    out: Annotated[Path | None, typer.Option("--out", help="Write to this file.")] = None,
) -> None:
    """Print (or write) the Markdown reference of the policy file."""
    from allotment.config.reference import render_reference

    text = render_reference()
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)
