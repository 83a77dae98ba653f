"""`allot serve`: the API in this process (or several), the controller in a process of its own."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer

from allotment import __version__
from allotment.cli.admin import load_or_exit
from allotment.cli.output import console, fail

__all__ = ["serve"]


def serve(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", envvar="ALLOTMENT_CONFIG", help="Policy file to apply at start."
        ),
    ] = None,
    host: Annotated[
        str | None,
        typer.Option(
            help="Address to listen on. Default: from $JUPYTERHUB_SERVICE_URL, else 127.0.0.1."
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(help="Port to listen on. Default: from $JUPYTERHUB_SERVICE_URL, else 8750."),
    ] = None,
    workers: Annotated[int, typer.Option(help="API worker processes (PostgreSQL only).")] = 1,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    controller: Annotated[
        bool,
        typer.Option(help="Run workloads from this service (off: API only, nothing runs)."),
    ] = True,
) -> None:
    """Run the Allotment service alone (for development, or for JupyterHub to manage).

    The API answers in this process (or in ``--workers`` processes); the controller, which
    schedules and runs workloads, runs in a process of its own, so that neither waits for
    the other's CPU.
    """
    import uvicorn

    from allotment.config.models import Policy

    policy = load_or_exit(config) if config else Policy()
    # The service is imported lazily: thin-client commands must not load the server stack.
    from importlib import import_module

    app_module = import_module("allotment.api.app")
    process = import_module("allotment.controller.process")
    settings = dataclasses.replace(
        app_module.settings_from_policy(policy, apply=config is not None), controller=False
    )
    if moved := app_module.earlier_data_dir(settings.data_dir):
        fail(moved)
    if workers > 1 and settings.database_url.startswith("sqlite"):
        console.print("[yellow]SQLite takes one writer; running 1 API worker.[/]")
        workers = 1
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    # aiosqlite logs every statement's parameters at DEBUG: workloads' environments, Dask
    # clusters' keys. Secrets are never logged, whatever the level.
    logging.getLogger("aiosqlite").setLevel(logging.INFO)
    base = settings.base_url.rstrip("/")
    # Under JupyterHub (a managed service) the hub says where it expects us.
    hub_url = urlsplit(os.environ.get("JUPYTERHUB_SERVICE_URL", ""))
    host = host or hub_url.hostname or "127.0.0.1"
    port = port or hub_url.port or 8750
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    # Where Dask schedulers report when the policy's dask.service_url is unset.
    listen = f"[{shown_host}]" if ":" in shown_host else shown_host
    settings = dataclasses.replace(settings, listen_url=f"http://{listen}:{port}{base}/")
    console.print(
        f"Allotment {__version__} on [bold]http://{shown_host}:{port}{base}/[/]\n"
        f"  API docs:    http://{shown_host}:{port}{base}/api/docs\n"
        f"  database:    {settings.database_url.split('@')[-1]}\n"
        f"  admin token: {settings.data_dir / 'admin-token'} (readable by you only)\n"
        f"  try:         ALLOTMENT_URL=http://{shown_host}:{port}{base}/ allot whoami",
        highlight=False,
        soft_wrap=True,  # paths whole, even in a log that is not a terminal
    )
    os.environ.setdefault("ALLOTMENT_DATA_DIR", str(settings.data_dir))
    # Held until this process ends, from before the database is migrated: `allot restore`
    # refuses while any service of the installation runs, and none starts during a restore.
    locks = import_module("allotment.controller.lock")
    try:
        service_lock = locks.hold_service(settings.data_dir)
    except locks.Restoring as e:
        fail(str(e))
    # Prepared once here, before any other process starts: they never race to apply it.
    asyncio.run(app_module.prepare_once(settings))
    settings = dataclasses.replace(settings, prepared=True)
    running = None
    if controller:
        running = process.ControllerProcess(
            process.ProcessSettings(
                database_url=settings.database_url,
                data_dir=str(settings.data_dir),
                installation=settings.installation,
                log_level=log_level,
            )
        )
        try:
            if running.start() == "standby":
                console.print(
                    "[yellow]Another process of this installation runs the controller; this "
                    "one takes over when it ends.[/]"
                )
        except process.ControllerStartFailed as e:
            fail(str(e))
    # uvicorn ends a SIGTERM by raising it again once it has shut down: make that an exit
    # through the `finally` below, which stops the controller's process first.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    common = {
        "host": host,
        "port": port,
        "log_level": log_level,
        "access_log": False,
        "proxy_headers": True,
    }
    try:
        if workers == 1:
            uvicorn.run(app_module.create_app(settings), **common)  # type: ignore[arg-type]
            return
        if config is not None:
            os.environ["ALLOTMENT_CONFIG"] = str(config.resolve())
        os.environ["ALLOTMENT_CONTROLLER"] = "0"
        os.environ["ALLOTMENT_LISTEN_URL"] = settings.listen_url or ""
        uvicorn.run(
            "allotment.api.app:app_from_environment",
            factory=True,
            workers=workers,
            **common,  # type: ignore[arg-type]
        )
    finally:
        if running is not None:
            running.stop()
        service_lock.close()
