"""Slurm's commands as pure functions: the arguments going in, the records coming out.

Nothing here runs anything (``runner`` does); every function is tested on recorded outputs
of the real commands (``tests/data/slurm``). Parsers read the JSON of Slurm 22.05's
``squeue --json`` and ``sinfo --json`` (OpenAPI v0.0.38) and the parsable text of ``sacct -P``
(its ``--json`` in 22.05 reports exit status 0 for every job that exited non-zero, so it
cannot be trusted for ends). A JSON answer listing ``errors`` means the controller did not
answer, although the command exited 0: ``Unanswered``.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from allotment.backends.base import LaunchSpec

__all__ = [
    "SACCT_FIELDS",
    "Job",
    "NodeInfo",
    "Submission",
    "Unanswered",
    "batch_script",
    "expand_hostlist",
    "parse_exit",
    "parse_raw_status",
    "parse_sacct",
    "parse_sbatch",
    "parse_sinfo",
    "parse_squeue",
    "parse_squeue_text",
    "sacct_argv",
    "squeue_argv",
    "sbatch_argv",
]

MIB = 2**20


class Unanswered(Exception):
    """A JSON answer that carries errors instead of records (slurmctld did not answer)."""


@dataclass(frozen=True)
class Submission:
    """How a pool submits: what the policy says beside the workload itself."""

    installation: str
    #: The Slurm account (``names.slurm_account`` of the workload's account).
    account: str
    partition: str | None = None
    qos: str | None = None
    #: The partition's GPUs carry their model as GRES type (``gpu:a100:4``); False where
    #: they are plain ``gpu:4`` (then a model's GPUs are asked for as any GPUs).
    gpu_types: bool = True


@dataclass(frozen=True)
class Job:
    """One Slurm job as ``squeue`` or ``sacct`` tells it."""

    job_id: int
    name: str
    #: Slurm's state word: PENDING, RUNNING, COMPLETING, COMPLETED, FAILED, CANCELLED…
    state: str
    #: Slurm's reason word (``state_reason``): Resources, Priority, TimeLimit, None…
    reason: str = ""
    #: Nodes it holds or held, in order; empty while pending.
    nodes: tuple[str, ...] = ()
    #: The node its batch script runs on.
    batch_host: str = ""
    #: Exit status as a shell gives it (128 + N for a signal N); None: unknown.
    exit_code: int | None = None
    #: The signal that ended it, if any (0: none).
    signal: int = 0
    #: Unix seconds; 0: not (yet) known. For a pending job ``start`` is Slurm's expected start.
    start: int = 0
    end: int = 0
    submit: int = 0
    #: Minutes; None: no limit.
    time_limit: int | None = None
    user: str = ""
    account: str = ""
    partition: str = ""
    #: How many times Slurm put it back in its queue.
    restarts: int = 0
    priority: int = 0
    comment: str = ""
    #: Nodes Slurm is told to avoid or reports as the cause (for NODE_FAIL, the nodes).
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def started(self) -> bool:
        """Whether it ever ran (was given nodes): a job cancelled while pending has a start
        time (its end), but no node."""
        return bool(self.nodes or self.batch_host)

    @property
    def first_node(self) -> str:
        return self.batch_host or (self.nodes[0] if self.nodes else "")


@dataclass(frozen=True)
class NodeInfo:
    """One node as ``sinfo`` tells it."""

    name: str
    #: Its ``NodeAddr``: where clients reach what runs on it.
    address: str
    #: Slurm's base state (idle, mixed, allocated, down…) with its flags (drain, …).
    state: str
    flags: tuple[str, ...]
    reason: str
    cpus: int
    #: MiB.
    memory: int
    alloc_cpus: int
    alloc_memory: int
    #: Generic resources, e.g. {"gpu:a100": 2} or {"gpu": 2}.
    gres: Mapping[str, int]
    partitions: tuple[str, ...]


# -- submission ------------------------------------------------------------------------------


def _gpu_request(gpus: Mapping[str, int], nodes: int, typed: bool = True) -> str | None:
    """``--gres`` for GPUs by model, per node; None for none. ``typed`` False: the models'
    counts together, as untyped GPUs."""
    if not typed:
        total = sum(n for n in gpus.values() if n > 0)
        return f"gpu:{math.ceil(total / nodes)}" if total else None
    parts = []
    for model, n in sorted(gpus.items()):
        if n <= 0:
            continue
        per_node = math.ceil(n / nodes)
        parts.append(f"gpu:{model}:{per_node}" if model and model != "gpu" else f"gpu:{per_node}")
    return ",".join(parts) or None


def sbatch_argv(
    spec: LaunchSpec,
    how: Submission,
    *,
    job_name: str,
    workdir: str,
    stdout: str,
    stderr: str,
) -> list[str]:
    """``sbatch`` with every option of the workload (the script goes on its stdin)."""
    nodes = max(1, spec.nodes)
    cpus = max(1, math.ceil(spec.resources.millicpus / 1000 / nodes))
    argv = [
        "sbatch",
        "--parsable",
        "--job-name",
        job_name,
        "--account",
        how.account,
        "--nodes",
        str(nodes),
        "--ntasks-per-node",
        "1",
        "--cpus-per-task",
        str(cpus),
        "--chdir",
        workdir,
        "--output",
        stdout,
        "--error",
        stderr,
        "--comment",
        f"allotment:{how.installation}:{spec.workload}",
        # The job's environment is the script's own (below), nothing of sbatch's.
        "--export",
        "NONE",
        "--no-requeue" if spec.kind == "session" else "--requeue",
    ]
    if spec.resources.memory > 0:
        argv += ["--mem", f"{max(1, math.ceil(spec.resources.memory / nodes / MIB))}M"]
    if how.partition:
        argv += ["--partition", how.partition]
    if how.qos:
        argv += ["--qos", how.qos]
    gres = _gpu_request(spec.resources.gpus, nodes, how.gpu_types)
    if gres:
        argv += ["--gres", gres]
    if spec.max_runtime is not None:
        argv += ["--time", str(max(1, math.ceil(spec.max_runtime / 60)))]
    return argv


def batch_script(spec: LaunchSpec, home: str, user: str) -> bytes:
    """The job's script: its environment, then its command in place of the shell."""
    env = {"HOME": home, "USER": user, "LOGNAME": user, "PATH": "/usr/local/bin:/usr/bin:/bin"}
    threads = str(max(1, math.ceil(spec.resources.millicpus / 1000 / max(1, spec.nodes))))
    env.update(OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    # What the local backend sets too: a Dask worker's name is its workload id.
    env.update(ALLOT_WORKLOAD_ID=str(spec.workload), ALLOT_ACCOUNT=spec.account)
    env.update(spec.env)
    # sbatch --export=NONE leaves SLURM_EXPORT_ENV=NONE in the job, and srun reads it: every
    # step (``srun hostname``) would start with an empty environment, without PATH.
    env["SLURM_EXPORT_ENV"] = "ALL"
    lines = ["#!/bin/sh"]
    for key, value in env.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ValueError(f"environment variable name {key!r} is not valid in a shell")
        lines.append(f"export {key}={shlex.quote(value)}")
    lines.append("exec " + shlex.join(spec.command))
    return ("\n".join(lines) + "\n").encode()


_SBATCH_ID = re.compile(r"(\d+)(?:;[A-Za-z0-9_.-]+)?")


def parse_sbatch(stdout: bytes) -> int:
    """The job id ``sbatch --parsable`` printed (``123`` or ``123;cluster``), and nothing
    else: sbatch runs as the user, who could write into its output, so anything but exactly
    one such line is refused rather than guessed at (the backend also checks the job it names
    is the workload's before acting on it as root)."""
    lines = [line.strip() for line in stdout.decode(errors="replace").splitlines() if line.strip()]
    m = _SBATCH_ID.fullmatch(lines[0]) if len(lines) == 1 else None
    if m is None:
        raise ValueError(f"sbatch did not print one job id: {stdout[:200]!r}")
    return int(m.group(1))


# -- hostlists and exit statuses ----------------------------------------------------------------


def expand_hostlist(hostlist: str) -> list[str]:
    """``n[1-3],gpu[01,03]`` → n1 n2 n3 gpu01 gpu03 (Slurm's compressed hostlists)."""
    out: list[str] = []
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,]*", hostlist or ""):
        m = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", part)
        if m is None:
            if part:
                out.append(part)
            continue
        prefix, ranges, suffix = m.groups()
        for r in ranges.split(","):
            lo, _, hi = r.partition("-")
            if not hi:
                out.append(f"{prefix}{lo}{suffix}")
                continue
            width = len(lo)
            for i in range(int(lo), int(hi) + 1):
                out.append(f"{prefix}{i:0{width}d}{suffix}")
    return out


def parse_raw_status(status: int) -> tuple[int | None, int]:
    """(exit code, signal) from a wait status as ``squeue --json`` gives it."""
    sig = status & 0x7F
    if sig:
        return (128 + sig if sig < 65 else None), sig
    return (status >> 8) & 0xFF, 0


def parse_exit(text: str) -> tuple[int | None, int]:
    """(exit code, signal) from ``sacct``'s ``ExitCode`` (``7:0``, ``0:9``)."""
    code, _, sig = text.partition(":")
    try:
        c, s = int(code or 0), int(sig or 0)
    except ValueError:
        return None, 0
    if s:
        return (128 + s if s < 65 else None), s
    return c, 0


# -- squeue --------------------------------------------------------------------------------------


def _load(raw: bytes | str, what: str) -> dict[str, Any]:
    data = json.loads(raw)
    errors = data.get("errors") or []
    if errors:
        said = "; ".join(
            str(e.get("description") or e.get("error") or e) if isinstance(e, dict) else str(e)
            for e in errors
        )
        raise Unanswered(f"{what}: {said}")
    return data  # type: ignore[no-any-return]


def _words(value: Any) -> str:
    """A state as text: 22.05 gives a word, later versions a list of words."""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value or "")


def _number(value: Any) -> int:
    """A number as text, int or 24.x's {"set": …, "number": …}."""
    if isinstance(value, dict):
        return int(value.get("number") or 0) if value.get("set", True) else 0
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _job(raw: Mapping[str, Any]) -> Job:
    nodes: list[str] = []
    resources = raw.get("job_resources") or {}
    allocated = resources.get("allocated_nodes") if isinstance(resources, dict) else None
    if isinstance(allocated, list) and allocated:
        nodes = [str(n.get("nodename")) for n in allocated if n.get("nodename")]
    if not nodes:
        nodes = expand_hostlist(str(raw.get("nodes") or ""))
    code, sig = parse_raw_status(_number(raw.get("exit_code")))
    limit = raw.get("time_limit")
    limit_minutes = _number(limit) if limit not in (None, "") else None
    return Job(
        job_id=_number(raw.get("job_id")),
        name=str(raw.get("name") or ""),
        state=_words(raw.get("job_state")),
        reason=str(raw.get("state_reason") or ""),
        nodes=tuple(nodes),
        batch_host=str(raw.get("batch_host") or ""),
        exit_code=code,
        signal=sig,
        start=_number(raw.get("start_time")),
        end=_number(raw.get("end_time")),
        submit=_number(raw.get("submit_time")),
        time_limit=limit_minutes or None,
        user=str(raw.get("user_name") or ""),
        account=str(raw.get("account") or ""),
        partition=str(raw.get("partition") or ""),
        restarts=_number(raw.get("restart_cnt")),
        priority=_number(raw.get("priority")),
        comment=str(raw.get("comment") or ""),
    )


def parse_squeue(raw: bytes | str) -> list[Job]:
    """Every job of ``squeue --json`` (all states: ended jobs stay for ``MinJobAge``)."""
    data = _load(raw, "squeue")
    return [_job(j) for j in data.get("jobs") or []]


#: ``squeue -O`` fields, ``|``-separated, the job's name last (a name may hold a ``|``).
SQUEUE_FIELDS = (
    "JobID",
    "State",
    "Reason",
    "NodeList",
    "BatchHost",
    "StartTime",
    "SubmitTime",
    "TimeLimit",
    "UserName",
    "Account",
    "Partition",
    "PriorityLong",
    "Name",
)


def squeue_argv() -> list[str]:
    """Every job Slurm holds (ended ones too, for ``MinJobAge``), as text: about 15 times
    cheaper than ``squeue --json`` (which ignores every filter and prints 3 kB a job: 1.1 s
    for 3,000 jobs against 0.07 s), at the price of exit statuses, which ``sacct`` gives."""
    fields = ",".join(f"{f}:|" for f in SQUEUE_FIELDS[:-1]) + f",{SQUEUE_FIELDS[-1]}:"
    return ["squeue", "-h", "-t", "all", "-O", fields]


def _slurm_duration(text: str) -> int | None:
    """Minutes (rounded up) from ``[D-]H:MM:SS`` or ``M:SS``; None for UNLIMITED and others."""
    m = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", text.strip())
    if m is None:
        return None
    d, h, mi, sec = (int(x or 0) for x in m.groups())
    return d * 1440 + h * 60 + mi + (1 if sec else 0)


def parse_squeue_text(raw: bytes | str) -> list[Job]:
    """Jobs of ``squeue_argv()``'s output. Exit statuses are not in it (None)."""
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    out = []
    n = len(SQUEUE_FIELDS)
    for line in text.splitlines():
        cols = line.split("|", n - 1)
        if len(cols) < n or not cols[0].strip().isdigit():
            continue
        jid, state, reason, nodelist, batch, start, submit, limit = cols[:8]
        user, account, partition, priority, name = cols[8:]
        nodes = expand_hostlist(nodelist.strip())
        batch = batch.strip()
        out.append(
            Job(
                job_id=int(jid),
                name=name.rstrip("\n"),
                state=state.strip().split()[0] if state.strip() else "",
                reason=reason.strip(),
                nodes=tuple(nodes),
                batch_host="" if batch in ("n/a", "(null)", "None") else batch,
                exit_code=None,
                start=_sacct_time(start.strip()),
                end=0,
                submit=_sacct_time(submit.strip()),
                time_limit=_slurm_duration(limit),
                user=user.strip(),
                account=account.strip(),
                partition=partition.strip(),
                priority=int(priority) if priority.strip().isdigit() else 0,
            )
        )
    return out


# -- sstat ---------------------------------------------------------------------------------------


def sstat_argv(job_ids: Sequence[int]) -> list[str]:
    """One ``sstat`` for the running steps of every job given (``-a``: the batch step too)."""
    return [
        "sstat",
        "-a",
        "-P",
        "-n",
        "-j",
        ",".join(map(str, job_ids)),
        "-o",
        "JobID,TRESUsageInTot",
    ]


_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def cpu_time(text: str) -> float | None:
    """Seconds from Slurm's ``[D-][HH:]MM:SS[.mmm]``; None where it is not one."""
    m = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+(?:\.\d+)?)", text.strip())
    if m is None:
        return None
    d, h, mi = (int(x or 0) for x in m.groups()[:3])
    return d * 86400 + h * 3600 + mi * 60 + float(m.group(4))


def parse_sstat(raw: bytes | str) -> dict[int, tuple[float | None, int | None]]:
    """Per job: (CPU seconds over its steps, the largest memory of a step in bytes)."""
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    out: dict[int, tuple[float | None, int | None]] = {}
    for line in text.splitlines():
        step, _, tres = line.partition("|")
        jid = step.split(".")[0].split("_")[0]
        if not jid.isdigit():
            continue
        usage = dict(part.split("=", 1) for part in tres.split(",") if "=" in part)
        cpu = cpu_time(usage.get("cpu", ""))
        mem_text = usage.get("mem", "")
        mem = None
        m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)", mem_text)
        if m:
            mem = int(float(m.group(1)) * _UNITS.get(m.group(2), 1))
        before_cpu, before_mem = out.get(int(jid), (None, None))
        if cpu is not None:
            before_cpu = (before_cpu or 0.0) + cpu
        if mem is not None:
            before_mem = max(before_mem or 0, mem)
        out[int(jid)] = (before_cpu, before_mem)
    return out


# -- sacct ---------------------------------------------------------------------------------------

#: What ``sacct -P`` is asked for, in this order (``parse_sacct`` reads them so).
SACCT_FIELDS = (
    "JobIDRaw",
    "JobName",
    "State",
    "ExitCode",
    "Reason",
    "NodeList",
    "Start",
    "End",
    "Submit",
    "Timelimit",
    "User",
    "Account",
    "Partition",
    "Comment",
)


def sacct_argv(
    job_ids: Sequence[int] = (), *, names: Sequence[str] = (), since: str = "now-7days"
) -> list[str]:
    """One ``sacct`` call for the given jobs (by id, else by name), allocations only."""
    argv = ["sacct", "-P", "-n", "-X", "-D", "-S", since, "-o", ",".join(SACCT_FIELDS)]
    if job_ids:
        argv += ["-j", ",".join(str(j) for j in job_ids)]
    if names:
        argv += ["--name", ",".join(names)]
    return argv


@functools.lru_cache(maxsize=4096)
def _sacct_time(text: str) -> int:
    """Unix seconds from Slurm's local ``2026-12-02T15:21:04`` (``Unknown``, ``N/A``: 0).
    Cached: thousands of jobs share a handful of submission seconds."""
    try:
        return int(dt.datetime.fromisoformat(text).timestamp())
    except ValueError:
        return 0


def _limit_minutes(text: str) -> int | None:
    """Minutes from sacct's ``[D-]HH:MM:SS`` or ``MM``; None for ``UNLIMITED``/``Partition_Limit``."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d+):(\d+)", text)
    if m:
        d, h, mi, s = (int(x or 0) for x in m.groups())
        return d * 1440 + h * 60 + mi + (1 if s else 0)
    return int(text) if text.isdigit() else None


def parse_sacct(raw: bytes | str) -> list[Job]:
    """Jobs of ``sacct -P -n -o <SACCT_FIELDS>``; of a job listed twice (requeued: each run a
    record), the last record."""
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    out: dict[int, Job] = {}
    for line in text.splitlines():
        cols = line.split("|")
        if len(cols) < len(SACCT_FIELDS) or not cols[0].isdigit():
            continue
        jid, name, state, exit_text, reason, nodelist, start, end, submit, limit = cols[:10]
        user, account, partition = cols[10:13]
        comment = "|".join(cols[13:])
        code, sig = parse_exit(exit_text)
        words = state.split()
        extra: dict[str, Any] = {}
        if len(words) > 2 and words[1] == "by" and words[2].isdigit():
            extra["cancelled_by_uid"] = int(words[2])
        nodes = [] if nodelist in ("None assigned", "") else expand_hostlist(nodelist)
        out[int(jid)] = Job(
            job_id=int(jid),
            name=name,
            state=words[0] if words else "",
            reason=reason,
            nodes=tuple(nodes),
            batch_host=nodes[0] if nodes else "",
            exit_code=code,
            signal=sig,
            start=_sacct_time(start),
            end=_sacct_time(end),
            submit=_sacct_time(submit),
            time_limit=_limit_minutes(limit),
            user=user,
            account=account,
            partition=partition,
            comment=comment,
            extra=extra,
        )
    return list(out.values())


# -- sinfo ---------------------------------------------------------------------------------------


def _gres(text: str) -> dict[str, int]:
    """``gpu:a100:2(S:0),gpu:1`` → {"gpu:a100": 2, "gpu": 1}."""
    out: dict[str, int] = {}
    for part in (text or "").split(","):
        part = re.sub(r"\(.*\)$", "", part.strip())
        if not part or part in ("(null)", "N/A"):
            continue
        bits = part.split(":")
        if len(bits) >= 2 and bits[-1].isdigit():
            key, n = ":".join(bits[:-1]), int(bits[-1])
        else:
            key, n = part, 1
        out[key] = out.get(key, 0) + n
    return out


def parse_sinfo(raw: bytes | str) -> list[NodeInfo]:
    """Every node of ``sinfo --json`` once (the JSON lists nodes, not partition rows)."""
    data = _load(raw, "sinfo")
    seen: dict[str, NodeInfo] = {}
    for n in data.get("nodes") or []:
        name = str(n.get("name") or "")
        if not name or name in seen:
            continue
        state = n.get("state")
        if isinstance(state, list):  # later versions: ["IDLE", "DRAIN"]
            words = [str(s).lower() for s in state]
            base, flags = (words[0] if words else "unknown"), tuple(words[1:])
        else:
            base = str(state or "unknown").lower()
            flags = tuple(str(f).lower() for f in n.get("state_flags") or [])
        seen[name] = NodeInfo(
            name=name,
            address=str(n.get("address") or name),
            state=base,
            flags=flags,
            reason=str(n.get("reason") or ""),
            cpus=_number(n.get("cpus")),
            memory=_number(n.get("real_memory")),
            alloc_cpus=_number(n.get("alloc_cpus")),
            alloc_memory=_number(n.get("alloc_memory")),
            gres=_gres(str(n.get("gres") or "")),
            partitions=tuple(str(p) for p in n.get("partitions") or []),
        )
    return list(seen.values())
