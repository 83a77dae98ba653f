"""`allot up`: the whole hub on its embedded defaults, in one command."""

from __future__ import annotations

import importlib.util
import os
import shutil
import stat
import sys
from pathlib import Path
from typing import Annotated

import typer

from allotment.cli.admin import load_or_exit
from allotment.cli.environments import ensure_environment
from allotment.cli.hub_setup import HubLayout, default_policy, hub_config
from allotment.cli.output import console, fail
from allotment.interpreters import closed_at

__all__ = ["up"]

SECRETS = ("admin-password", "user-password", "spawner-token", "traefik-api")
#: What `allot up` runs beyond Allotment itself, from its ``hub`` extra: modules, and programs
#: looked for next to this interpreter and on $PATH.
HUB_MODULES = ("jupyterhub_traefik_proxy",)
HUB_PROGRAMS = ("traefik",)
#: Directories every workload has a private one of (the local backend's ``PRIVATE_DIRS``,
#: which a thin client may not import).
PRIVATE = (Path("/tmp"), Path("/dev/shm"))


def _default_data_dir() -> Path:
    if env := os.environ.get("ALLOTMENT_HUB_DIR"):
        return Path(env)
    # Root's home is private (0700): sessions, running as their users, could not reach an
    # environment inside it.
    if os.geteuid() == 0:
        return Path("/var/lib/allotment")
    return Path.home() / ".local/share/allotment-hub"


def _missing_hub_extra() -> list[str]:
    """What of the ``hub`` extra is not installed: module and program names."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    missing = [m for m in HUB_MODULES if importlib.util.find_spec(m) is None]
    return missing + [p for p in HUB_PROGRAMS if shutil.which(p, path=path) is None]


def _closed_to_sessions(path: Path) -> str | None:
    """Why sessions, running as other users, cannot reach ``path``; None when they can."""
    for private in PRIVATE:
        if path == private or private in path.parents:
            return (
                f"it is under {private}, and every session has a private {private} of its own. "
                "Choose a --data-dir elsewhere (the default as root is /var/lib/allotment)"
            )
    closed = closed_at(path)
    if closed is None:
        return None
    try:
        mode = f" (mode {stat.S_IMODE(os.stat(closed).st_mode):04o})"
    except OSError:
        return f"{closed} does not exist"
    if closed.is_dir():
        return (
            f"other users cannot enter {closed}{mode}. Run `chmod o+x {closed}`, or choose a "
            "--data-dir that every user can reach (the default as root is /var/lib/allotment)"
        )
    return f"other users cannot run {closed}{mode}. Run `chmod o+rx {closed}`"


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
    if missing := _missing_hub_extra():
        fail(
            f"`allot up` needs the hub extra ({', '.join(missing)} not found): install it with "
            f"`{sys.executable} -m pip install 'allotment[hub]'`."
        )
    layout = HubLayout((data_dir or _default_data_dir()).resolve())
    layout.create()
    # Sessions run as their users' own accounts (as root): a data directory they cannot
    # reach makes every session fail with "exited with status 126", so say so now.
    isolated = os.geteuid() == 0
    if isolated and (why := _closed_to_sessions(layout.environments)):
        fail(f"Sessions could not reach their environment in {layout.environments}: {why}.")
    if config is not None:
        load_or_exit(config)
        layout.write_policy(config.read_text())
    elif not layout.policy.exists():
        layout.write_policy(default_policy(admin))
        console.print(
            f"Wrote a policy for this machine: {layout.policy} (mode 0600)", soft_wrap=True
        )
    policy = load_or_exit(layout.policy)
    for name in SECRETS:
        layout.secret(name)
    with console.status("Preparing the session environment (the first start takes a minute)…"):
        try:
            ensure_environment(layout.environments / "default")
        except Exception as e:  # noqa: BLE001 - said to the administrator, with the cause
            fail(f"Could not build the session environment: {e}")
    runs = layout.environments / "default" / "bin" / "python"
    if isolated and (why := _closed_to_sessions(runs)):
        fail(f"Sessions could not run {runs}: {why}.")
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
        if isolated
        else ("\n  [yellow]Not root: every session runs as you (single-user mode).[/]")
    )
    console.print(
        f"\n[bold]Allotment hub[/] on [bold]http://{shown}:{port}/[/]\n"
        f"  first administrator: log in as [bold]{admin}[/] with the password in "
        f"{layout.secrets / 'admin-password'}\n"
        f"  other users: any name, with the shared password in "
        f"{layout.secrets / 'user-password'} (configure PAM, LDAP or OAuth: docs/hub-login.md)\n"
        f"  policy: {layout.policy}\n"
        f"  API:    ALLOTMENT_URL=http://{shown}:{port}/services/allotment/ allot whoami\n"
        f"  data:   {layout.root}{mode}",
        highlight=False,
        soft_wrap=True,  # paths whole, even in a log that is not a terminal
    )
    command = [sys.executable, "-m", "jupyterhub", "-f", str(layout.config)]
    if prepare_only:
        console.print("  start: " + " ".join(command), highlight=False, soft_wrap=True)
        return
    os.chdir(layout.hub)
    os.execv(sys.executable, command)
