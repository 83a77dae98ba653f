"""Reading logs in the Standard Workload Format (Parallel Workloads Archive).

One job a line, 18 whitespace-separated fields; ``;`` starts a header line; -1 is unknown.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TraceJob", "read_swf"]


@dataclass(frozen=True, slots=True)
class TraceJob:
    id: int
    submit: float
    runtime: float
    procs: int
    #: Requested time; the runtime when the log has none.
    requested: float
    user: int
    group: int
    partition: int


def read_swf(path: str | Path, partition: int | None = None) -> Iterator[TraceJob]:
    """Jobs of a SWF log (``.gz`` or plain) that ran for a known time on a known number of
    processors; with ``partition``, only that partition's."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith(";"):
                continue
            fields = line.split()
            if len(fields) < 18:
                raise ValueError(f"{path}:{n}: expected 18 fields, found {len(fields)}")
            job, submit, _wait, run, alloc = (float(x) for x in fields[:5])
            req_procs, req_time = float(fields[7]), float(fields[8])
            user, group, part = int(fields[11]), int(fields[12]), int(fields[15])
            procs = int(alloc if alloc > 0 else req_procs)
            if run < 0 or procs <= 0 or submit < 0:
                continue
            if partition is not None and part != partition:
                continue
            yield TraceJob(
                int(job), submit, run, procs, req_time if req_time > 0 else run, user, group, part
            )
