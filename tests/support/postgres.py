"""A private PostgreSQL server a test (or a benchmark) may stop and start: never the
session-wide one in ``ALLOTMENT_TEST_POSTGRES``, which other tests use meanwhile."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.hub import free_port

__all__ = ["Postgres", "private_postgres"]

PG = Path(__file__).resolve().parents[2] / "scripts/pg"


class Postgres:
    """``scripts/pg`` on a directory and port of its own; ``url`` once started."""

    def __init__(self, directory: Path, port: int, *, durable: bool = False) -> None:
        self.directory, self.port, self.durable = directory, port, durable
        self.url = ""

    def start(self) -> None:
        command = [str(PG), "start", str(self.directory), str(self.port)]
        done = subprocess.run(
            [*command, "durable"] if self.durable else command, capture_output=True, text=True
        )
        if done.returncode == 3:  # scripts/pg: PostgreSQL is not installed here
            pytest.skip(done.stderr.strip())
        assert done.returncode == 0, done.stderr
        self.url = done.stdout.strip()

    def stop(self) -> None:
        subprocess.run([str(PG), "stop", str(self.directory)], check=True)


@contextmanager
def private_postgres(prefix: str, *, durable: bool = False) -> Iterator[Postgres]:
    """A started server in a new directory under /tmp (pytest's directories are private to
    root, and the server runs as postgres), stopped and removed afterwards."""
    server = Postgres(Path(tempfile.mkdtemp(prefix=prefix)), free_port(), durable=durable)
    try:
        server.start()
    except BaseException:
        shutil.rmtree(server.directory, ignore_errors=True)
        raise
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.directory, ignore_errors=True)
