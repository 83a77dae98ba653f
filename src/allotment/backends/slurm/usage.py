"""Slurm's accounting as charges: which jobs of ``sacct`` are imported, and the spans of each.

Pure: ``sacct --json`` text goes in, the spans to charge come out; the controller
(``controller/slurm_usage.py``) runs ``sacct`` and writes them with ``db.ledger.charge_external``.

A job is imported when every part of it maps to the policy:

- its name is no Allotment installation's (``names.OURS``): those jobs are workloads, charged
  by the meter of the installation that submitted them;
- its Slurm account is an Allotment account's mirror (``names.slurm_account``);
- its Slurm user is a hub user's POSIX account (``users``, built by the controller from the
  users table, see ``hub_users``);
- its partition is a Slurm pool's (that pool's rates price it; with several pools on one
  partition, the one whose ``qos`` is the job's, else the first).

Each job is charged by spans of the clock (``accounting.entry``, aligned to the epoch like the
meter's) from its start, each span once, under ``rules.external_key("slurm", "<cluster>:<job
id>:<submit time>", span start)``: job ids repeat after a reset, the submit time does not. A
finished job is charged through its end; a running one only for the spans that are over by
``now`` (the rest later). What a job holds is its allocated TRES (CPUs, memory, ``gres/gpu``),
the total over its nodes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from allotment.backends.local.posix import MARK, decode, legacy_unix_name, mark, unix_name
from allotment.backends.slurm import names
from allotment.domain import ledger as rules
from allotment.domain.costs import Rates
from allotment.domain.ledger import Measured
from allotment.domain.resources import Resources

__all__ = [
    "Piece",
    "SlurmJob",
    "SlurmPool",
    "Targets",
    "hub_users",
    "parse_sacct",
    "pieces",
    "plan",
    "sacct_argv",
]

MIB = 2**20
SOURCE = "slurm"


@dataclass(frozen=True, slots=True)
class SlurmJob:
    """One allocation (``sacct -X``) as accounting recorded it."""

    cluster: str
    job_id: int
    name: str
    submitted: datetime
    #: None while it has not started (pending, or cancelled before it started).
    start: datetime | None
    #: None while it runs.
    end: datetime | None
    user: str
    account: str
    partition: str
    qos: str
    state: str
    #: Allocated CPUs, memory and GPUs, the total over its nodes (requested while none is).
    resources: Resources
    #: CPU seconds its steps used (user + system); None where accounting has none.
    cpu_seconds: float | None = None

    @property
    def external_id(self) -> str:
        """The job among all of this cluster's, ever: ids repeat, submit times do not."""
        return f"{self.cluster}:{self.job_id}:{self.submitted.strftime('%Y-%m-%dT%H:%M:%SZ')}"


def sacct_argv(seconds_back: int) -> list[str]:
    """``sacct`` for the allocations (``-X``) of every user (``-a``), every run of a requeued
    job included (``-D``), that were pending or running in the last ``seconds_back`` seconds
    until now. Relative times: Slurm reads absolute ones in its own local time zone."""
    return [
        "sacct",
        "--json",
        "-X",
        "-a",
        "-D",
        "-S",
        f"now-{max(int(seconds_back), 1)}seconds",
        "-E",
        "now",
    ]


def _time(value: Any) -> datetime | None:
    """Slurm's epoch seconds; 0 (or nothing) is "not yet"."""
    if not value:
        return None
    return datetime.fromtimestamp(int(value), UTC)


def _tres(items: Iterable[Mapping[str, Any]] | None) -> Resources:
    """CPUs, memory (MiB in Slurm) and GPUs (``gres`` ``gpu`` or ``gpu:<model>``) of a TRES list."""
    millicpus = memory = 0
    gpus: dict[str, int] = {}
    for t in items or ():
        count = int(t.get("count") or 0)
        kind, name = t.get("type"), t.get("name") or ""
        if kind == "cpu":
            millicpus = count * 1000
        elif kind == "mem":
            memory = count * MIB
        elif kind == "gres" and (name == "gpu" or name.startswith("gpu:")) and count:
            model = name.partition(":")[2] or "gpu"
            gpus[model] = gpus.get(model, 0) + count
    return Resources(millicpus, memory, gpus)


def _seconds(t: Mapping[str, Any] | None) -> float:
    t = t or {}
    return int(t.get("seconds") or 0) + int(t.get("microseconds") or 0) / 1e6


def parse_sacct(text: str | bytes) -> list[SlurmJob]:
    """The jobs of ``sacct --json`` (OpenAPI v0.0.38, Slurm 22.05; later versions name the
    same fields), in its order."""
    out = []
    for j in json.loads(text).get("jobs", []):
        t = j.get("time") or {}
        tres = j.get("tres") or {}
        allocated = _tres(tres.get("allocated"))
        if not allocated.millicpus:
            allocated = _tres(tres.get("requested"))
        state = j.get("state") or {}
        cpu = _seconds(t.get("total"))
        submitted = _time(t.get("submission")) or datetime.fromtimestamp(0, UTC)
        out.append(
            SlurmJob(
                cluster=str(j.get("cluster") or ""),
                job_id=int(j["job_id"]),
                name=str(j.get("name") or ""),
                submitted=submitted,
                start=_time(t.get("start")),
                end=_time(t.get("end")),
                user=str(j.get("user") or ""),
                account=str(j.get("account") or "").lower(),
                partition=str(j.get("partition") or ""),
                qos=str(j.get("qos") or ""),
                state=str(state.get("current") if isinstance(state, dict) else state),
                resources=allocated,
                cpu_seconds=cpu if cpu > 0 else None,
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class SlurmPool:
    """A Slurm pool of the policy, as the import prices its jobs."""

    pool_id: int
    partition: str
    qos: str | None
    rates: Rates
    #: The pool's capacity (its declared nodes): a job's dominant share of it is fair share's.
    capacity: Resources


@dataclass(frozen=True, slots=True)
class Targets:
    """What Slurm's names map to in this installation."""

    #: Slurm account name (``names.slurm_account`` of the path) → account id.
    accounts: Mapping[str, int]
    #: POSIX user name → hub user id (``hub_users``).
    users: Mapping[str, int]
    #: The policy's Slurm pools, in policy order.
    pools: tuple[SlurmPool, ...]

    def pool_of(self, job: SlurmJob) -> SlurmPool | None:
        on = [p for p in self.pools if p.partition == job.partition]
        return next((p for p in on if p.qos == job.qos), on[0] if on else None)


def hub_users(
    users: Mapping[str, int],
    local: Mapping[str, str] | None = None,
    existing: Iterable[str] = (),
) -> dict[str, int]:
    """POSIX name → hub user id, the inverse of ``PosixAccounts.resolve``.

    ``users``: hub name → id (the users table). ``local``: POSIX name → GECOS field of the
    accounts this machine knows (the round's Slurm users). An account Allotment made carries
    its hub user in its GECOS field, which decides; an account of Allotment's naming
    (``jupyter-<escaped name>``, or the older hash of a long name) that this machine knows
    without that mark is somebody else's (Allotment never takes one over); one it does not
    know at all (the nodes' directory is elsewhere) goes by its name. ``existing``: hub names
    whose own POSIX account the identity rules accept (``identity.existing_accounts``; the
    controller checks each as they do)."""
    local = local or {}
    out: dict[str, int] = {}
    for hub, uid in users.items():
        for posix in (unix_name(hub), legacy_unix_name(hub)):
            if local.get(posix, mark(hub)) == mark(hub):
                out.setdefault(posix, uid)
    for hub in existing:
        if hub in users:
            out[hub] = users[hub]
    for posix, field in local.items():
        if not field.startswith(MARK):
            continue
        try:
            hub = decode(field[len(MARK) :])
        except (ValueError, UnicodeDecodeError):
            continue
        if hub in users:
            out[posix] = users[hub]
        else:  # made for a hub user this installation does not know
            out.pop(posix, None)
    return out


@dataclass(frozen=True, slots=True)
class Piece:
    """One span of one job to charge: ``db.ledger.charge_external``'s arguments."""

    external_id: str
    account_id: int
    user_id: int
    pool_id: int
    start: datetime
    end: datetime
    resources: Resources
    #: Millionths of the currency per hour of ``resources``.
    rate: int
    share: float
    measured: Measured | None

    @property
    def key(self) -> str:
        return rules.external_key(SOURCE, self.external_id, self.start)


def pieces(
    start: datetime, end: datetime | None, now: datetime, entry_seconds: int
) -> list[tuple[datetime, datetime]]:
    """The spans of [start, end) to charge: cut at the clock's span boundaries, the last one
    through the end for a finished job; for a running one (``end`` None) only spans over by
    ``now``."""
    step = timedelta(seconds=entry_seconds)
    out = []
    a = start
    while True:
        b = rules.span_start(a, entry_seconds) + step
        if end is not None and b >= end:
            if end > a:
                out.append((a, end))
            return out
        if end is None and b > now:
            return out
        out.append((a, b))
        a = b


def plan(
    jobs: Iterable[SlurmJob],
    targets: Targets,
    *,
    now: datetime,
    entry_seconds: int,
    since: datetime | None = None,
    dominant_share: Callable[[Resources, Resources], float] | None = None,
    ours: Callable[[SlurmJob], bool] | None = None,
) -> tuple[list[Piece], dict[str, int]]:
    """The pieces to charge of ``jobs``, and how many jobs were left out and why (``ours``,
    ``account``, ``user``, ``partition``, ``not started``).

    ``since``: spans that ended at or before it were charged by an earlier import (the
    watermark less its margin) and are not planned again. ``dominant_share(requested,
    capacity) -> float`` gives fair share's usage per second (none without it). ``ours(job)``
    says whether a job is a workload an installation charges itself; by default, any job
    named like one (``names.OURS``), which a user could imitate: the controller passes a check
    of the name against its own workloads' jobs."""
    out: list[Piece] = []
    skipped: dict[str, int] = {}

    def skip(why: str) -> None:
        skipped[why] = skipped.get(why, 0) + 1

    for job in jobs:
        if ours(job) if ours is not None else names.OURS.match(job.name):
            skip("ours")
            continue
        account = targets.accounts.get(job.account)
        if account is None:
            skip("account")
            continue
        user = targets.users.get(job.user)
        if user is None:
            skip("user")
            continue
        pool = targets.pool_of(job)
        if pool is None:
            skip("partition")
            continue
        if job.start is None:
            skip("not started")
            continue
        rate = rules.hourly_micros(pool.rates, job.resources)
        share = dominant_share(job.resources, pool.capacity) if dominant_share else 0.0
        spans = pieces(job.start, job.end, now, entry_seconds)
        for i, (a, b) in enumerate(spans):
            if since is not None and b <= since:
                continue
            last = job.end is not None and i == len(spans) - 1
            out.append(
                Piece(
                    external_id=job.external_id,
                    account_id=account,
                    user_id=user,
                    pool_id=pool.pool_id,
                    start=a,
                    end=b,
                    resources=job.resources,
                    rate=rate,
                    share=share,
                    # The job's CPU time is known as a whole: it goes with its last span.
                    measured=Measured(cpu_seconds=job.cpu_seconds) if last else None,
                )
            )
    return out, skipped
