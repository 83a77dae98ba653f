"""How the pages write money, times, sizes and waste, so every page says them alike."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from markupsafe import Markup, escape

__all__ = ["Waste", "gib", "hours", "local_time", "money", "percent", "waste_of"]

MICROS = 1_000_000


def money(micros: int | float | None, currency: str) -> str:
    """``1,000.00 credits``: the currency with two decimals (amounts are kept in millionths)."""
    return f"{(micros or 0) / MICROS:,.2f} {currency}"


def percent(fraction: float | None) -> str:
    if fraction is None:
        return "–"
    return f"{fraction * 100:.0f} %" if fraction >= 0.1 else f"{fraction * 100:.1f} %"


def hours(seconds: float) -> str:
    h = seconds / 3600
    return f"{h:,.1f} h" if h < 100 else f"{h:,.0f} h"


def gib(size: float) -> str:
    """Bytes as the policy writes sizes: ``64G``, ``2.1G``, ``512M``."""
    g = size / 2**30
    if g >= 10:
        return f"{g:.0f}G"
    if g >= 1:
        return f"{g:.1f}G".replace(".0G", "G")
    return f"{size / 2**20:.0f}M"


def local_time(t: datetime | None, tz: str) -> Markup:
    """A ``<time>`` element: UTC in ``datetime`` for the page's script to show in the viewer's
    zone, and the site's zone (named) in its text for a browser that runs no script."""
    if t is None:
        return Markup("–")
    local = t.astimezone(ZoneInfo(tz))
    utc = t.astimezone(ZoneInfo("UTC")).strftime("%Y-%m-%dT%H:%M:%SZ")
    text = local.strftime("%Y-%m-%d %H:%M ") + (local.tzname() or tz)
    return Markup('<time datetime="{}">{}</time>').format(utc, escape(text))


@dataclass(frozen=True, slots=True)
class Waste:
    """How much of what a workload requested it used, over its charged time."""

    #: Used ÷ requested, where measured (None: not measured, or nothing requested).
    cpu: float | None
    memory: float | None
    gpu: float | None
    #: The researcher-facing words: "16 CPUs at 4 % for 6.0 h", "64G requested, 2.1G peak".
    words: list[str]

    @property
    def worst(self) -> float:
        return min((f for f in (self.cpu, self.memory, self.gpu) if f is not None), default=1.0)


#: Below this fraction of what was requested, a resource counts as wasted.
WASTED_BELOW = 0.25


def waste_of(
    *,
    millicpus: int,
    memory: int,
    gpus: int,
    seconds: float,
    used_cpu_seconds: float | None,
    peak_memory: int | None,
    gpu_utilisation: float | None,
) -> Waste:
    """Compare requested with measured use over ``seconds`` of charged time."""
    cpus = millicpus / 1000
    cpu = (
        used_cpu_seconds / (cpus * seconds)
        if used_cpu_seconds is not None and cpus and seconds
        else None
    )
    mem = peak_memory / memory if peak_memory is not None and memory else None
    gpu = gpu_utilisation if gpus and gpu_utilisation is not None else None
    words: list[str] = []
    if gpu is not None and gpu < WASTED_BELOW:
        words.append(f"{gpus} GPU{'s' if gpus != 1 else ''} at {percent(gpu)} for {hours(seconds)}")
    if cpu is not None and cpu < WASTED_BELOW:
        n = f"{cpus:g}"
        words.append(f"{n} CPU{'s' if cpus != 1 else ''} at {percent(cpu)} for {hours(seconds)}")
    if mem is not None and mem < WASTED_BELOW and peak_memory is not None:
        words.append(f"{gib(memory)} requested, {gib(peak_memory)} peak")
    return Waste(cpu, mem, gpu, words)
