"""`allot up`: the whole hub on its embedded defaults, in one command."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer

from allotment.cli.admin import load_or_exit
from allotment.cli.output import console, fail
from allotment.hub.environments import ensure_environment
from allotment.hub.setup import HubLayout, default_policy, hub_config

__all__ = ["up"]

SECRETS = ("admin-password", "user-password", "spawner-token", "traefik-api")


def _default_data_dir() -> Path:
    if env := os.environ.get("ALLOTMENT_HUB_DIR"):
        return Path(env)
    # Root's home is private (0700): sessions, running as their users, could not reach an
    # environment inside it.
    if os.geteuid() == 0:
        return Path("/var/lib/allotment")
    return Path.home() / ".local/share/allotment-hub"


def up(
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Where the hub keeps everything. Default: $ALLOTMENT_HUB_DIR, else "
            "/var/lib/allotment as root, else ~/.local/share/allotment-hub.",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="Policy file to use (copied into the data directory). Default: the one there, "
            "generated for this machine on first start.",
        ),
    ] = None,
    ip: Annotated[str, typer.Option(help="Address the hub listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port the hub listens on.")] = 8000,
    admin: Annotated[str, typer.Option(help="Name of the first administrator.")] = "admin",
    hub_port: Annotated[int, typer.Option(help="Port of the hub's internal API.")] = 8081,
    service_port: Annotated[int, typer.Option(help="Port of the Allotment service.")] = 8751,
    proxy_api_port: Annotated[int, typer.Option(help="Port of Traefik's API.")] = 8099,
    prepare_only: Annotated[
        bool, typer.Option(help="Prepare everything and print how to start, but do not start.")
    ] = False,
) -> None:
    """Install and start the hub: JupyterHub in front, Allotment behind, sessions queued."""
    layout = HubLayout((data_dir or _default_data_dir()).resolve())
    layout.create()
    if config is not None:
        load_or_exit(config)
        shutil.copyfile(config, layout.policy)
    elif not layout.policy.exists():
        layout.policy.write_text(default_policy(admin))
        console.print(f"Wrote a policy for this machine: {layout.policy}")
    policy = load_or_exit(layout.policy)
    for name in SECRETS:
        layout.secret(name)
    with console.status("Preparing the session environment (the first start takes a minute)…"):
        try:
            ensure_environment(layout.environments / "default")
        except Exception as e:  # noqa: BLE001 - said to the administrator, with the cause
            fail(f"Could not build the session environment: {e}")
    layout.config.write_text(
        hub_config(
            layout,
            admin=admin,
            ip=ip,
            port=port,
            hub_port=hub_port,
            service_port=service_port,
            traefik_api_port=proxy_api_port,
            named_servers=policy.sessions.named_servers,
        )
    )
    shown = "127.0.0.1" if ip in ("0.0.0.0", "::", "") else ip
    mode = (
        ""
        if os.geteuid() == 0
        else ("\n  [yellow]Not root: every session runs as you (single-user mode).[/]")
    )
    console.print(
        f"\n[bold]Allotment hub[/] on [bold]http://{shown}:{port}/[/]\n"
        f"  first administrator: log in as [bold]{admin}[/] with the password in "
        f"{layout.secrets / 'admin-password'}\n"
        f"  other users: any name, with the shared password in "
        f"{layout.secrets / 'user-password'} (configure PAM, LDAP or OAuth: README)\n"
        f"  policy: {layout.policy}\n"
        f"  API:    ALLOTMENT_URL=http://{shown}:{port}/services/allotment/ allot whoami\n"
        f"  data:   {layout.root}{mode}",
        highlight=False,
    )
    command = [sys.executable, "-m", "jupyterhub", "-f", str(layout.config)]
    if prepare_only:
        console.print("  start: " + " ".join(command), highlight=False)
        return
    os.chdir(layout.hub)
    os.execv(sys.executable, command)
