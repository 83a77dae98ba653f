"""Printing for humans (Rich tables) or machines (``--json``), and clean failures."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape

from allotment.client import AllotmentClient, ApiError, Retry, discover, search_path

__all__ = ["client", "console", "fail", "print_json", "run"]

console = Console()
err = Console(stderr=True)
T = TypeVar("T")


def fail(message: str, code: int = 1) -> NoReturn:
    # soft_wrap: paths and commands whole, also in logs that are not terminals.
    # Escaped: messages are text ("allotment[hub]", "FILE.swf[.gz]"), not markup.
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def print_json(data: BaseModel | Sequence[BaseModel] | dict[str, Any] | list[Any]) -> None:
    if isinstance(data, BaseModel):
        payload: Any = data.model_dump(mode="json")
    elif isinstance(data, list | tuple) and data and isinstance(data[0], BaseModel):
        payload = [d.model_dump(mode="json") for d in data]
    else:
        payload = data
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")


def client(url: str | None, token: str | None) -> AllotmentClient:
    env_url, env_token = discover(search_path())
    token = token or env_token
    if not token:
        fail(
            "no token: set $ALLOTMENT_TOKEN (or run inside a JupyterHub session, which sets "
            "$JUPYTERHUB_API_TOKEN), or pass --token."
        )
    return AllotmentClient(url or env_url, token, retry=_retry(), on_retry=_retrying)


def _retry() -> Retry:
    """How long a call is retried while the service is unavailable:
    ``$ALLOTMENT_RETRY_SECONDS`` (0: not at all), else 30 s."""
    seconds = os.environ.get("ALLOTMENT_RETRY_SECONDS")
    try:
        return Retry(seconds=max(float(seconds), 0.0)) if seconds else Retry()
    except ValueError:
        fail(f"$ALLOTMENT_RETRY_SECONDS must be a number of seconds, not {seconds!r}")


def _retrying(reason: str, seconds: float) -> None:
    err.print(
        f"Allotment is unavailable ({escape(reason)}); retrying for up to {seconds:g} s…",
        highlight=False,
        soft_wrap=True,
    )


def run(call: Callable[[], T]) -> T:
    """Run an API call; turn its problem into a one-line error and exit code 1."""
    try:
        return call()
    except ApiError as e:
        fail(str(e))
