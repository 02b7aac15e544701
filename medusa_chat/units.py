"""Human-readable sizes and durations for the command line and the app."""

from __future__ import annotations


def human_bytes(n: float) -> str:
    """``1.5 GB``, ``320.0 kB``, ``12 B``."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def human_duration(seconds: float | None) -> str:
    """``1h05m``, ``3m07s``, ``42s``; ``–`` when unknown."""
    if seconds is None:
        return "–"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
