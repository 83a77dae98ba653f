"""How an ``AllotmentCluster`` shows itself in a notebook: Dask's own cluster card, with what
the service says of it (workers running against requested, why the rest wait and when they are
expected to start, the cost per hour)."""

from __future__ import annotations

from html import escape
from typing import Any

from dask.widgets.widgets import get_template

from allotment.schemas import DaskClusterOut

__all__ = ["cluster_html", "scaling_html", "summary"]


def summary(info: DaskClusterOut | None, connected: int) -> list[tuple[str, str]]:
    """(label, text) lines: state, workers, why they wait, cost; ``connected`` is the number
    of workers the scheduler knows (it may run ahead of the service's count)."""
    if info is None:
        return [("State", "asking the service for the cluster")]
    lines = [("State", info.state + (f": {info.reason}" if info.reason else ""))]
    mode = f"adaptive {info.adapt.minimum}-{info.adapt.maximum}" if info.adapt else "manual"
    lines.append(("Scaling", mode))
    running = max(info.running, connected)
    lines.append(("Workers", f"{running} running of {info.workers} asked for"))
    if info.requested:
        waits = f"{info.requested} requested (waiting in the queue or starting)"
        if info.waiting_reason:
            waits += f": {info.waiting_reason}"
        if info.expected_start:
            waits += f", expected to start {info.expected_start:%Y-%m-%d %H:%M} UTC"
        lines.append(("Waiting", waits))
    w = info.worker
    lines.append(
        (
            "Each worker",
            f"{w.cpus:g} CPUs, {w.memory / 2**30:.1f} GiB, {w.threads} threads"
            + (f", {w.gpus} GPUs" if w.gpus else ""),
        )
    )
    lines.append(("Account", f"{info.account} (profile {info.profile})"))
    lines.append(("Cost", f"{info.cost_per_hour:.2f} {info.currency}/h"))
    return lines


def _table(lines: list[tuple[str, str]]) -> str:
    rows = "".join(
        f'<tr><td style="text-align: left;"><strong>{escape(k)}:</strong> {escape(v)}</td></tr>'
        for k, v in lines
    )
    return f"<table>{rows}</table>"


def scaling_html(info: DaskClusterOut | None, connected: int) -> str:
    """The widget's "Scaling" tab: requested against running, and why the rest wait."""
    return _table(summary(info, connected))


def cluster_html(
    cluster: Any, info: DaskClusterOut | None, status_html: str, cluster_status: Any = None
) -> str:
    """Dask's cluster card with Allotment's status above the scheduler's details."""
    try:
        scheduler = cluster.scheduler_info._repr_html_()
    except AttributeError:
        scheduler = "Scheduler not connected yet."
    extra = status_html + (cluster_status or "")
    return str(
        get_template("cluster.html.j2").render(
            type=type(cluster).__name__,
            name=cluster.name,
            workers=cluster.scheduler_info["workers"],
            dashboard_link=cluster.dashboard_link,
            scheduler_info_repr=scheduler,
            cluster_status=extra,
        )
    )
