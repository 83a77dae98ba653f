"""Batch jobs: ``allot submit``, ``allot jobs``, ``allot logs`` (``allot cancel`` is shared
with every workload)."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from allotment.cli.output import client, console, fail, print_json, run
from allotment.client import AllotmentClient, ApiError
from allotment.domain.quantities import format_bytes
from allotment.schemas import WorkloadCreate, WorkloadOut

__all__ = ["register"]

Url = Annotated[str | None, typer.Option("--url", envvar="ALLOTMENT_URL", help="Service URL.")]
Token = Annotated[
    str | None, typer.Option("--token", help="API token (default: $ALLOTMENT_TOKEN).")
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _snapshot(script: Path) -> str:
    """A private copy of a job script, so that editing it after submission changes nothing
    (as sbatch does); kept under ``~/.allotment/scripts`` by content hash."""
    content = script.read_bytes()
    folder = Path.home() / ".allotment" / "scripts"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    copy = folder / (hashlib.sha256(content).hexdigest()[:16] + "-" + script.name)
    if not copy.exists():
        tmp = copy.with_suffix(".tmp")
        tmp.write_bytes(content)
        tmp.chmod(0o700)
        tmp.replace(copy)
    return str(copy)


def _command(words: list[str]) -> list[str]:
    """The command to run; a lone script file runs from a snapshot, through its #! line or
    bash."""
    lone = words[0] if len(words) == 1 else ""
    if lone and Path(lone).is_file() and ("/" in lone or shutil.which(lone) is None):
        script = Path(words[0]).resolve()
        copy = _snapshot(script)
        has_shebang = script.read_bytes()[:2] == b"#!"
        return [copy] if has_shebang else ["/bin/bash", copy]
    return words


def _env(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, eq, value = pair.partition("=")
        if not eq:
            if name not in os.environ:
                fail(f"--env {pair}: give NAME=VALUE, or the name of a variable you have set")
            value = os.environ[name]
        out[name] = value
    return out


def submit(
    command: Annotated[
        list[str], typer.Argument(help="The command and its arguments (after --), or a script.")
    ],
    profile: Annotated[str | None, typer.Option("--profile", "-p", help="A profile.")] = None,
    pool: Annotated[str | None, typer.Option(help="Pool, when no profile is given.")] = None,
    cpus: Annotated[float | None, typer.Option("--cpus", "-c", help="CPU cores.")] = None,
    mem: Annotated[str | None, typer.Option("--mem", help="Memory, e.g. 4G.")] = None,
    gpus: Annotated[int | None, typer.Option("--gpus", help="GPUs.")] = None,
    nodes: Annotated[
        int,
        typer.Option(
            "--nodes",
            "-N",
            min=1,
            help="Nodes it spans (a cluster's pool, e.g. Slurm); --cpus, --mem, --gpus per node.",
        ),
    ] = 1,
    time_limit: Annotated[
        str | None, typer.Option("--time", "-t", help="Longest run, e.g. 30m or 2h.")
    ] = None,
    account: Annotated[
        str | None, typer.Option("--account", "-A", help="Account to charge.")
    ] = None,
    array: Annotated[
        str | None, typer.Option("--array", "-a", help="Job array indices: 0-99, 0-99:10, 1,4,9.")
    ] = None,
    after: Annotated[
        int | None, typer.Option("--after", help="Start after this job ends successfully.")
    ] = None,
    name: Annotated[str, typer.Option("--name", "-J", help="A name for the job.")] = "",
    output: Annotated[
        str | None,
        typer.Option("--output", "-o", help="stdout file; %j id, %A array, %a index."),
    ] = None,
    error: Annotated[str | None, typer.Option("--error", "-e", help="stderr file.")] = None,
    chdir: Annotated[
        Path | None, typer.Option("--chdir", "-D", help="Working directory (default: here).")
    ] = None,
    env: Annotated[
        list[str] | None,
        typer.Option("--env", help="NAME=VALUE, or NAME to pass yours on (repeatable)."),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", "-W", help="Wait for it to end; exit with its status.")
    ] = False,
    url: Url = None,
    token: Token = None,
    json: Json = False,
) -> None:
    """Submit a batch job: allot submit --cpus 2 --mem 4G -- python train.py"""
    if not command:
        fail("give the command to run after --, e.g. allot submit -- python train.py")
    workdir = str((chdir or Path.cwd()).resolve())
    request = WorkloadCreate(
        kind="job",
        name=name or Path(command[0]).name,
        account=account,
        profile=profile,
        pool=pool,
        cpus=cpus,
        memory=mem,
        gpus=gpus,
        nodes=nodes,
        command=_command(command),
        max_runtime=time_limit,
        env=_env(env or []),
        workdir=workdir,
        stdout=output,
        stderr=error,
        array=array,
        after=after,
    )
    with client(url, token) as c:
        # A key of its own: retried while the service is unavailable, the submission is
        # still made once.
        key = f"submit-{uuid.uuid4().hex}"
        w = run(lambda: c.create_workload(request, idempotency_key=key))
        if json and not wait:
            return print_json(w)
        what = f"array {w.id}" if array else f"job {w.id}"
        out = output or (f"allot-{w.id}_<index>.out" if array else f"allot-{w.id}.out")
        console.print(
            f"Submitted {what} ({w.status}: {w.reason}); output in {out}", highlight=False
        )
        if wait:
            raise typer.Exit(_wait(c, w, array is not None))


def _wait(c: AllotmentClient, w: WorkloadOut, is_array: bool) -> int:
    """Poll until the job (every task of an array) ended; the worst exit status."""
    delay = 0.2
    while True:
        items = c.workloads(array=w.id, limit=None) if is_array else [c.workload(w.id)]
        if items and all(i.status in ("stopped", "failed") for i in items):
            worst = max((i.exit_code or (1 if i.status == "failed" else 0)) for i in items)
            for i in items:
                if i.status == "failed":
                    console.print(f"{i.id}: failed: {i.reason}", highlight=False)
            return min(worst, 255)
        time.sleep(delay)
        delay = min(delay * 1.5, 2.0)


def _when(at: datetime | None) -> str:
    if at is None:
        return "-"
    local = at.astimezone()
    today = datetime.now(UTC).astimezone().date()
    return local.strftime("%H:%M" if local.date() == today else "%Y-%m-%d %H:%M")


def jobs(
    state: Annotated[
        list[str] | None, typer.Option("--state", "-s", help="Only these states (repeatable).")
    ] = None,
    array: Annotated[int | None, typer.Option("--array", help="Only this array's tasks.")] = None,
    user: Annotated[
        str | None, typer.Option("--user", "-u", help="Someone else's (managers).")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="At most this many (0: all).")] = 50,
    url: Url = None,
    token: Token = None,
    json: Json = False,
) -> None:
    """Your batch jobs, newest first: place in the queue and expected start for pending ones."""
    with client(url, token) as c:
        me = user or run(c.me).name
        items = run(
            lambda: c.workloads(status=state, user=me, kind="job", array=array, limit=limit or None)
        )
    if json:
        return print_json(items)
    table = Table("id", "name", "state", "account", "size", "place", "start", "end", "reason")
    for w in items:
        size = f"{w.cpus:g} cpu, {format_bytes(w.memory)}" + "".join(
            f", {n}× {m}" for m, n in w.gpus.items()
        )
        place = f"#{w.position}" if w.status == "pending" and w.position else (w.node or "-")
        start = "~" + _when(w.expected_start) if w.status == "pending" else _when(w.started_at)
        end = _when(w.ended_at) + (f" ({w.exit_code})" if w.exit_code is not None else "")
        label = w.name + (f"[{w.array_index}]" if w.array_index is not None else "")
        table.add_row(str(w.id), label, w.status, w.account, size, place, start, end, w.reason)
    console.print(table if items else "no jobs")


def logs(
    workload: Annotated[int, typer.Argument(help="Job id.")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing as it runs.")
    ] = False,
    stderr: Annotated[bool, typer.Option("--err", help="Standard error instead.")] = False,
    url: Url = None,
    token: Token = None,
) -> None:
    """Print a job's output (its stdout file, or stderr with --err)."""
    stream = "stderr" if stderr else "stdout"
    offset = 0
    with client(url, token) as c:
        while True:
            try:
                data, offset, ended = c.output(workload, stream=stream, offset=offset)
            except ApiError as e:
                if follow and e.status == 404 and "has no" in str(e):
                    time.sleep(1.0)  # not started yet
                    continue
                fail(str(e))
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
            if data:
                continue
            if not follow or ended:
                return
            time.sleep(0.5)


def register(app: typer.Typer) -> None:
    for command in (submit, jobs, logs):
        app.command()(command)
