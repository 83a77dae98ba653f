"""`allot simulate`: replay a workload trace through the scheduler and report what it did."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from allotment.cli.output import console, fail

__all__ = ["simulate"]


def _groups(spec: str | None) -> dict[int, str]:
    out: dict[int, str] = {}
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        gid, _, account = part.partition("=")
        if not gid.strip().lstrip("-").isdigit() or not account.strip():
            fail(
                f"--map-groups {part!r}: write GROUP=ACCOUNT, e.g. 1=physics/lab-a,2=physics/lab-b"
            )
        out[int(gid)] = account.strip()
    return out


def simulate(
    trace: Annotated[
        Path | None, typer.Option("--trace", help="SWF log, plain or .gz.", exists=True)
    ] = None,
    from_history: Annotated[
        bool,
        typer.Option(
            "--from-history",
            help="Replay the service's recorded workloads under the "
            "policy in force and under --config, side by side (admins).",
        ),
    ] = False,
    since: Annotated[
        str, typer.Option(help="With --from-history: how far back, e.g. 30d.")
    ] = "30d",
    url: Annotated[
        str | None, typer.Option("--url", envvar="ALLOTMENT_URL", help="Service URL.")
    ] = None,
    token: Annotated[str | None, typer.Option("--token", help="Admin token.")] = None,
    cores: Annotated[int, typer.Option(help="CPUs of the simulated machine.")] = 0,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="Policy file: its accounts' shares and its scheduling "
            "section (policy, half-life, weights) are used.",
        ),
    ] = None,
    policy: Annotated[
        str | None,
        typer.Option(help="fairshare, easy or fifo (default: the config's, else fairshare)."),
    ] = None,
    partition: Annotated[int | None, typer.Option(help="Only this SWF partition.")] = None,
    map_groups: Annotated[
        str | None,
        typer.Option(
            help="SWF group ids to accounts: 1=physics/lab-a,2=physics/lab-b. "
            "Unmapped groups become accounts gN."
        ),
    ] = None,
    shares: Annotated[
        str | None, typer.Option(help="Account shares: physics/lab-a=2,physics/lab-b=1.")
    ] = None,
    half_life: Annotated[
        str | None, typer.Option(help="Usage decay half-life, e.g. 7d (default: the config's).")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write the schedule as CSV.")] = None,
) -> None:
    """Replay a Standard Workload Format trace (or the service's history) with a fake clock."""
    if from_history:
        return _what_if(config, since, url, token)
    if trace is None:
        fail("give --trace FILE.swf[.gz], or --from-history with --config PROPOSED.yaml")
    from allotment.cli.admin import load_or_exit
    from allotment.config.models import Policy
    from allotment.config.resolve import account_paths
    from allotment.domain.quantities import parse_duration
    from allotment.sim.metrics import measure
    from allotment.sim.replay import Weights, replay
    from allotment.sim.swf import read_swf

    spec = load_or_exit(config) if config else Policy()
    sched = spec.scheduling
    policy = policy or sched.policy
    if policy not in ("fairshare", "easy", "fifo"):
        fail(f"--policy {policy!r}: use fairshare, easy or fifo")
    try:
        jobs = list(read_swf(trace, partition))
        decay = parse_duration(half_life) if half_life else sched.half_life
    except ValueError as e:
        fail(str(e))
    weights = Weights(sched.fairshare_weight, sched.age_weight, sched.max_age)
    paths = account_paths(spec)
    if not jobs:
        fail(f"{trace}: no jobs" + (f" in partition {partition}" if partition is not None else ""))
    cores = cores or max(j.procs for j in jobs)
    groups = _groups(map_groups)
    share_of = {paths[n]: float(a.shares) for n, a in spec.accounts.items()}
    try:
        share_of |= {a: float(s) for a, s in (p.split("=") for p in (shares or "").split(",") if p)}
    except ValueError:
        fail(f"--shares {shares!r}: write ACCOUNT=SHARES, e.g. physics/lab-a=2,physics/lab-b=1")
    result = replay(
        jobs,
        cores,
        policy,  # type: ignore[arg-type]
        account_of=lambda j: groups.get(j.group, f"g{j.group}"),
        shares=share_of,
        half_life=decay,
        weights=weights,
    )
    m = measure(result)
    if out is not None:
        with out.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["job_id", "submit", "start", "end", "procs", "user", "group"])
            for o in result.outcomes:
                w.writerow(
                    [
                        o.job.id,
                        o.job.submit,
                        o.start,
                        o.end,
                        f"{o.job.procs:g}",
                        o.job.user,
                        o.job.group,
                    ]
                )
    console.print(
        f"{trace.name}: {m.jobs} jobs on {cores} cores, policy {policy}"
        + (f", {m.rejected} rejected" if m.rejected else "")
    )
    console.print(f"  utilisation          {m.utilisation:.1%}")
    console.print(
        f"  wait mean/median/max {m.wait_mean:,.0f} / {m.wait_median:,.0f} / {m.wait_max:,.0f} s"
    )
    console.print(f"  bounded slowdown     {m.bounded_slowdown_mean:.2f} (mean, tau 10 s)")
    console.print(
        f"  scheduler            {m.scheduler_wall_s:.1f} s wall, "
        f"{m.scheduler_cpu_s:.1f} s CPU, {m.cycles} cycles"
    )
    table = Table("account", "delivered", "target")
    for account, (got, target) in m.shares.items():
        table.add_row(account, f"{got:.1%}", f"{target:.1%}")
    console.print(table)


def _what_if(config: Path | None, since: str, url: str | None, token: str | None) -> None:
    from datetime import UTC, datetime, timedelta

    from allotment.cli.admin import load_or_exit
    from allotment.cli.output import client, run
    from allotment.config.models import Policy
    from allotment.domain.quantities import parse_duration
    from allotment.sim.what_if import compare, history_jobs

    if config is None:
        fail("--from-history needs --config PROPOSED.yaml, the policy to compare")
    proposed = load_or_exit(config)
    try:
        start = datetime.now(UTC) - timedelta(seconds=parse_duration(since))
    except ValueError as e:
        fail(f"--since: {e}")
    with client(url, token) as c:
        current = Policy.model_validate(run(c.policy)["document"])
        history = history_jobs(run(lambda: c.workloads(since=start, limit=None)))
    if not history.jobs:
        fail(f"no workloads recorded since {start:%Y-%m-%d %H:%M} UTC")
    try:
        now, new = compare(history, current, proposed)
    except ValueError as e:
        fail(f"nothing could run: {e}")
    console.print(
        f"{len(history.jobs)} workloads since {start:%Y-%m-%d %H:%M} UTC "
        "(run time taken as each workload's maximum runtime)"
    )
    table = Table("", "in force", str(config))
    rows = [
        ("ran", f"{now.jobs}", f"{new.jobs}"),
        ("rejected", f"{now.rejected}", f"{new.rejected}"),
        ("utilisation", f"{now.utilisation:.1%}", f"{new.utilisation:.1%}"),
        ("wait mean", f"{now.wait_mean:,.0f} s", f"{new.wait_mean:,.0f} s"),
        ("wait median", f"{now.wait_median:,.0f} s", f"{new.wait_median:,.0f} s"),
        ("wait max", f"{now.wait_max:,.0f} s", f"{new.wait_max:,.0f} s"),
        (
            "bounded slowdown",
            f"{now.bounded_slowdown_mean:.2f}",
            f"{new.bounded_slowdown_mean:.2f}",
        ),
    ]
    for account in sorted(set(now.shares) | set(new.shares)):
        a, b = now.shares.get(account, (0.0, 0.0)), new.shares.get(account, (0.0, 0.0))
        rows.append(
            (
                f"share {account}",
                f"{a[0]:.1%} (target {a[1]:.1%})",
                f"{b[0]:.1%} (target {b[1]:.1%})",
            )
        )
    for row in rows:
        table.add_row(*row)
    console.print(table)
