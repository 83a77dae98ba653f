"""Parsing of the quantities people write in policy files and on the command line.

Memory sizes are binary, as in Slurm and in ``free -h``: ``4G``, ``4Gi`` and ``4GiB`` all mean
4 × 1024³ bytes. Durations read like Slurm's and systemd's: ``90s``, ``30m``, ``8h``, ``2d``,
``1h30m``, or a number of seconds.
"""

from __future__ import annotations

import re

__all__ = [
    "describe_size",
    "format_bytes",
    "format_duration",
    "format_while",
    "parse_bytes",
    "parse_duration",
]

_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4, "P": 1024**5}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:i?B?)?\s*$", re.IGNORECASE)
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([dhms])", re.IGNORECASE)
_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_bytes(value: str | int | float) -> int:
    """Bytes in a size such as ``512M`` or ``4GiB``; a bare number is bytes."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size; write e.g. 4G or 512M")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"a size cannot be negative ({value})")
        return _finite(value, str(value), "size")
    m = _SIZE.match(value)
    if not m:
        raise ValueError(f"{value!r} is not a size; write e.g. 4G, 512M or 1T (binary units)")
    return _finite(float(m.group(1)) * _UNITS[m.group(2).upper()], value, "size")


def _finite(number: float, text: str, what: str) -> int:
    if number == float("inf"):
        raise ValueError(f"{text[:40]!r} is too large for a {what}")
    return int(number)


def format_bytes(n: int) -> str:
    """The shortest exact-ish binary form, e.g. ``4G`` or ``1.5G``."""
    for unit in ("P", "T", "G", "M", "K"):
        size = _UNITS[unit]
        if n >= size:
            value = n / size
            return f"{value:.0f}{unit}" if value == int(value) else f"{value:.1f}{unit}"
    return str(n)


def parse_duration(value: str | int | float) -> int:
    """Seconds in a duration such as ``8h`` or ``1h30m``; a bare number is seconds."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration; write e.g. 8h or 30m")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"a duration cannot be negative ({value})")
        return _finite(value, str(value), "duration")
    text = value.strip()
    if re.fullmatch(r"\d+", text):
        return int(text)
    parts = _DURATION_PART.findall(text)
    if not parts or _DURATION_PART.sub("", text).strip():
        raise ValueError(f"{value!r} is not a duration; write e.g. 90s, 30m, 8h, 2d or 1h30m")
    return _finite(sum(float(n) * _SECONDS[u.lower()] for n, u in parts), text, "duration")


def format_while(seconds: float) -> str:
    """A wait or a time left, for people: ``12 min`` (at least 1), ``2.5 h`` from 90 minutes."""
    minutes = max(1, round(seconds / 60))
    return f"{minutes} min" if minutes < 90 else f"{minutes / 60:.1f} h"


def format_duration(seconds: int) -> str:
    """``1h30m`` style; ``0s`` for zero."""
    out = []
    for unit, size in _SECONDS.items():
        if seconds >= size:
            out.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(out) or "0s"


def describe_size(n: int) -> str:
    """``1 MiB``, ``3.2 MiB``, ``128 KiB``, ``17 bytes``: sizes in messages to people."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            value = n / size
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n} byte" + ("" if n == 1 else "s")
