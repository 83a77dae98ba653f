"""The plots' data, as Chart.js configurations (``static/dashboard.js`` draws them). Each is
plain JSON in the page, so the numbers are also there for a reader without script."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import date, timedelta
from typing import Any

from allotment.web.display import MICROS
from allotment.web.periods import BurnDown

__all__ = ["burn_down_chart", "days_between", "stacked_usage_chart", "utilisation_chart"]

#: Users drawn on their own in the stacked plot; the rest are summed as "others" (one more
#: series; the reads sum them already, so the plot draws what it is given).
MOST_USERS = 12


def days_between(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def stacked_usage_chart(
    rows: Iterable[tuple[date, str, int]], first: date, last: date, currency: str
) -> dict[str, Any]:
    """Spending per day stacked by user: the biggest spenders each, the rest together."""
    days = days_between(first, last)
    index = {d: i for i, d in enumerate(days)}
    per_user: dict[str, list[float]] = defaultdict(lambda: [0.0] * len(days))
    for d, user, micros in rows:
        if d in index:
            per_user[user][index[d]] += micros / MICROS
    ranked = sorted(per_user, key=lambda u: (-sum(per_user[u]), u))
    datasets = [
        {"label": u, "data": [round(v, 2) for v in per_user[u]]} for u in ranked[: MOST_USERS + 1]
    ]
    if len(ranked) > MOST_USERS + 1:
        rest = [0.0] * len(days)
        for u in ranked[MOST_USERS + 1 :]:
            rest = [a + b for a, b in zip(rest, per_user[u], strict=True)]
        datasets.append(
            {"label": f"{len(ranked) - MOST_USERS} others", "data": [round(v, 2) for v in rest]}
        )
    return {
        "type": "bar",
        "data": {"labels": [d.isoformat() for d in days], "datasets": datasets},
        "options": {
            "animation": False,
            "maintainAspectRatio": False,
            "scales": {
                "x": {"stacked": True},
                "y": {"stacked": True, "title": {"display": True, "text": currency}},
            },
        },
    }


def burn_down_chart(burn: BurnDown, amount: int, currency: str) -> dict[str, Any]:
    def scaled(values: list[int | None]) -> list[float | None]:
        return [None if v is None else round(v / MICROS, 2) for v in values]

    return {
        "type": "line",
        "data": {
            "labels": [d.isoformat() for d in burn.days],
            "datasets": [
                {"label": "left", "data": scaled(burn.left), "fill": False},
                {
                    "label": "projected at the current rate",
                    "data": scaled(burn.projected),
                    "borderDash": [6, 4],
                    "fill": False,
                },
            ],
        },
        "options": {
            "animation": False,
            "maintainAspectRatio": False,
            "scales": {
                "y": {
                    "min": 0,
                    "suggestedMax": round(amount / MICROS, 2),
                    "title": {"display": True, "text": currency},
                }
            },
        },
    }


def utilisation_chart(
    rows: Iterable[tuple[date, str, float, float, float]],
    capacity: Mapping[str, tuple[float, float, int]],
    first: date,
    last: date,
) -> dict[str, Any]:
    """Per pool and day, requested CPU (and GPU, where the pool has GPUs) as a percentage of
    the pool's capacity over the whole day."""
    days = days_between(first, last)
    index = {d: i for i, d in enumerate(days)}
    series: dict[str, list[float]] = {}
    for d, pool, cpu_s, _mem_s, gpu_s in rows:
        if d not in index or pool not in capacity:
            continue
        cpus, _mem, gpus = capacity[pool]
        if cpus:
            series.setdefault(f"{pool} CPU", [0.0] * len(days))[index[d]] += (
                100 * cpu_s / (cpus * 86400)
            )
        if gpus:
            series.setdefault(f"{pool} GPU", [0.0] * len(days))[index[d]] += (
                100 * gpu_s / (gpus * 86400)
            )
    for pool, (cpus, _mem, _gpus) in capacity.items():
        if cpus:
            series.setdefault(f"{pool} CPU", [0.0] * len(days))
    return {
        "type": "line",
        "data": {
            "labels": [d.isoformat() for d in days],
            "datasets": [
                {"label": name, "data": [round(v, 1) for v in values], "fill": False}
                for name, values in sorted(series.items())
            ],
        },
        "options": {
            "animation": False,
            "maintainAspectRatio": False,
            "scales": {
                "y": {"min": 0, "suggestedMax": 100, "title": {"display": True, "text": "%"}}
            },
        },
    }
