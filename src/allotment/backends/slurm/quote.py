"""What Slurm says before a launch: the resources free on a partition's nodes (``sinfo
--json``) and the expected start of a job of a given size (``sbatch --test-only``).

The launch form asks for a quote every few seconds while it is open, for every profile: each
answer is cached for ``ttl`` seconds (one ``sinfo`` per partition and one ``--test-only`` per
size per ttl, whatever the number of open forms), and concurrent askers share one call.
Building the commands and reading their output are pure functions, tested on recorded output
of the real commands (tests/unit/test_slurm_quote.py); the commands run through one seam,
``Run``.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from allotment.backends.base import BackendUnavailable
from allotment.backends.slurm.runner import SlurmRunner
from allotment.domain.resources import Resources

__all__ = [
    "Estimate",
    "NodeFree",
    "Run",
    "SlurmQuotes",
    "free_nodes",
    "parse_test_only",
    "quotes_for",
    "runner_run",
    "estimate_command",
]

MIB = 2**20
#: A command's exit status, standard output and standard error.
Run = Callable[[Sequence[str]], Awaitable[tuple[int, str, str]]]

#: Node states (sinfo's base state or flags) in which a node takes no new work.
UNSCHEDULABLE = frozenset(
    {
        "down",
        "drain",
        "drained",
        "draining",
        "fail",
        "failing",
        "future",
        "not_responding",
        "powered_down",
        "powering_down",
        "maint",
        "reserved",
        "unknown",
        "no_respond",
        "reboot_requested",
        "reboot_issued",
        "invalid_reg",
    }
)


@dataclass(frozen=True, slots=True)
class NodeFree:
    """One node of a partition as a new job would find it now."""

    name: str
    #: Slurm's words, lowercased: ``idle``, ``mixed``, ``allocated``, ``down+not_responding``,
    #: ``idle+drain``…
    state: str
    #: What a new job could be given on it now; nothing when it takes no work (down, drained).
    free: Resources
    #: What it has in all (``CPUs``, ``RealMemory``, GRES).
    total: Resources
    #: Why it is down or drained (``reason``); empty when it is not.
    reason: str = ""


def _gres(text: str) -> dict[str, int]:
    """GPUs by model from a GRES string: ``gpu:a100:2(S:0-1),gpu:h100:1`` → {a100: 2, h100: 1};
    a GPU without a model counts as ``gpu``."""
    out: dict[str, int] = {}
    for item in (text or "").split(","):
        item = re.sub(r"\(.*?\)", "", item).strip()
        parts = item.split(":")
        if not parts or parts[0] != "gpu":
            continue
        model, count = "gpu", 1
        if len(parts) == 2:
            count = int(parts[1]) if parts[1].isdigit() else 1
            model = parts[1] if not parts[1].isdigit() else "gpu"
        elif len(parts) >= 3:
            model = parts[1]
            count = int(parts[2]) if parts[2].isdigit() else 1
        out[model] = out.get(model, 0) + count
    return out


def free_nodes(sinfo_json: str, partition: str | None) -> list[NodeFree]:
    """The nodes of ``partition`` (all nodes when None) from ``sinfo --json``, with what each
    could give a new job now (``idle_cpus``, ``real_memory - alloc_memory``, GRES not in use).
    """
    doc: dict[str, Any] = json.loads(sinfo_json)
    out: list[NodeFree] = []
    for node in doc.get("nodes", []):
        if partition is not None and partition not in (node.get("partitions") or []):
            continue
        base = str(node.get("state", "")).lower()
        flags = [str(f).lower() for f in node.get("state_flags") or []]
        state = "+".join([base, *flags])
        gpus = _gres(str(node.get("gres") or ""))
        used = _gres(str(node.get("gres_used") or ""))
        total = Resources.of(int(node.get("cpus") or 0), int(node.get("real_memory") or 0) * MIB)
        total = Resources(total.millicpus, total.memory, gpus)
        if base in UNSCHEDULABLE or UNSCHEDULABLE.intersection(flags):
            free = Resources()
        else:
            free = Resources.of(
                int(node.get("idle_cpus") or 0),
                max(int(node.get("real_memory") or 0) - int(node.get("alloc_memory") or 0), 0)
                * MIB,
                {m: n - used.get(m, 0) for m, n in gpus.items() if n > used.get(m, 0)},
            )
        out.append(NodeFree(str(node["name"]), state, free, total, str(node.get("reason") or "")))
    return out


@dataclass(frozen=True, slots=True)
class Estimate:
    """Slurm's answer to ``sbatch --test-only``."""

    #: When Slurm expects a job of that size to start (its own clock's local time, made
    #: aware), None when it refused one.
    start: datetime | None = None
    #: The nodes it would start on (``n1``, ``n[2-3]``).
    nodes: str = ""
    #: Why Slurm would not take it (no node of that size, no such partition), else None.
    refused: str | None = None


_START = re.compile(
    r"Job \d+ to start at (?P<at>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)"
    r"(?: using \d+ processors)?(?: on nodes (?P<nodes>\S+))?"
)


def parse_test_only(returncode: int, stderr: str) -> Estimate:
    """Read ``sbatch --test-only``'s verdict (it writes it on standard error)."""
    m = _START.search(stderr)
    if returncode == 0 and m:
        at = datetime.fromisoformat(m["at"]).astimezone()  # slurmctld's local time
        return Estimate(at, m["nodes"] or "")
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    failure = next((ln for ln in lines if ln.startswith("allocation failure:")), None)
    text = failure or (lines[-1] if lines else f"sbatch --test-only exited with {returncode}")
    text = text.removeprefix("allocation failure:").removeprefix("sbatch: error:").strip()
    return Estimate(refused=text[:1].lower() + text[1:] if text else text)


def estimate_command(
    sbatch: str,
    *,
    partition: str | None,
    qos: str | None,
    size: Resources,
    nodes: int = 1,
    walltime: float | None = None,
) -> list[str]:
    """``sbatch --test-only`` for a job of ``size`` (the total over ``nodes``), split per node
    as the backend submits it."""
    nodes = max(nodes, 1)
    argv = [sbatch, "--test-only", "--nodes", str(nodes), "--ntasks-per-node", "1"]
    argv += ["--cpus-per-task", str(max(math.ceil(size.cpus / nodes), 1))]
    if size.memory:
        argv += ["--mem", f"{max(math.ceil(size.memory / nodes / MIB), 1)}M"]
    for model, n in sorted(size.gpus.items()):
        per = max(math.ceil(n / nodes), 1)
        argv += ["--gres", f"gpu:{per}" if model == "gpu" else f"gpu:{model}:{per}"]
    if partition:
        argv += ["--partition", partition]
    if qos:
        argv += ["--qos", qos]
    if walltime:
        argv += ["--time", str(max(math.ceil(walltime / 60), 1))]
    return [*argv, "--output", "/dev/null", "--chdir", "/", "--wrap", "true"]


def runner_run(runner: SlurmRunner) -> Run:
    """``Run`` through the backend's one seam (``runner.SlurmRunner``): a controller that does
    not answer, or a command missing, is a failed command (status 255) with the reason."""

    async def run(argv: Sequence[str]) -> tuple[int, str, str]:
        try:
            done = await runner.run(argv, check=False)
        except BackendUnavailable as e:
            return 255, "", str(e)
        return (
            done.returncode,
            done.stdout.decode(errors="replace"),
            done.stderr.decode(errors="replace"),
        )

    return run


@dataclass
class _Cached:
    at: float
    task: asyncio.Task[Any]


@dataclass
class SlurmQuotes:
    """Slurm's free resources and start estimates, each cached ``ttl`` seconds."""

    run: Run
    ttl: float = 5.0
    clock: Callable[[], float] = time.monotonic
    _cache: dict[tuple[Any, ...], _Cached] = field(default_factory=dict, init=False)

    async def _cached(self, key: tuple[Any, ...], make: Callable[[], Awaitable[Any]]) -> Any:
        now = self.clock()
        hit = self._cache.get(key)
        if hit is None or now - hit.at > self.ttl or (hit.task.done() and hit.task.exception()):
            # One call for every asker of this key; a failed one is not kept.
            hit = _Cached(now, asyncio.ensure_future(make()))
            self._cache[key] = hit
            for k in [k for k, v in self._cache.items() if now - v.at > 10 * self.ttl]:
                del self._cache[k]
        return await asyncio.shield(hit.task)

    async def nodes(self, partition: str | None) -> list[NodeFree]:
        """The nodes of ``partition`` (all when None) as ``sinfo`` shows them now (at most
        ``ttl`` old: one ``sinfo`` serves every partition).

        Raises ``RuntimeError`` when ``sinfo`` fails (slurmctld does not answer)."""

        async def read() -> str:
            rc, out, err = await self.run(["sinfo", "--json"])
            if rc != 0:
                raise RuntimeError(err.strip() or f"sinfo exited with {rc}")
            return out

        text: str = await self._cached(("sinfo",), read)
        return free_nodes(text, partition)

    async def estimate(
        self,
        *,
        partition: str | None,
        qos: str | None,
        size: Resources,
        nodes: int = 1,
        walltime: float | None = None,
    ) -> Estimate:
        """When Slurm would start a job of ``size`` now (at most ``ttl`` old)."""
        argv = estimate_command(
            "sbatch",
            partition=partition,
            qos=qos,
            size=size,
            nodes=nodes,
            walltime=walltime,
        )

        async def ask() -> Estimate:
            rc, _, err = await self.run(argv)
            return parse_test_only(rc, err)

        key = ("test-only", *argv)
        result: Estimate = await self._cached(key, ask)
        return result


_shared: weakref.WeakKeyDictionary[SlurmRunner, SlurmQuotes] = weakref.WeakKeyDictionary()


def quotes_for(runner: SlurmRunner) -> SlurmQuotes:
    """The one ``SlurmQuotes`` of a runner (a cluster): every quote of this process shares its
    cache."""
    quotes = _shared.get(runner)
    if quotes is None:
        quotes = _shared[runner] = SlurmQuotes(runner_run(runner))
    return quotes
