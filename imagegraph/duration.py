"""Durations as people write them on a command line (`7d`, `12h`, `30m`, `1w2d`) and read them back."""

from __future__ import annotations

import re

UNITS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
_PART = re.compile(r"(\d+(?:\.\d+)?)([wdhms])")


def parse_duration(text: str) -> float:
    """Seconds in `7d`, `12h`, `30m`, `90s`, `1w`, `1d12h`; ValueError for anything else."""
    s = text.strip().lower().replace(" ", "")
    if not s or _PART.sub("", s):
        raise ValueError(f"not a duration: {text!r} (use e.g. 7d, 12h, 30m, 1d12h)")
    total = sum(float(n) * UNITS[u] for n, u in _PART.findall(s))
    if total <= 0:
        raise ValueError(f"duration must be positive: {text!r}")
    return total


def format_duration(seconds: float) -> str:
    """The compact form: 604800 -> `7d`, 129600 -> `1d12h`."""
    left = round(seconds)
    parts = []
    for unit, size in UNITS.items():
        if unit == "w":
            continue  # 14d reads better than 2w in a reason
        n, left = divmod(left, size)
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts) or "0s"


def format_age(seconds: float) -> str:
    """Roughly, for people: `9 days`, `13 hours`, `45 minutes`, `20 seconds`."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n != 1 else ''}"
    n = int(seconds)
    return f"{n} second{'s' if n != 1 else ''}"
