"""Load progress as plain strings: ``"label: done/total"`` is a stage's count, anything else a note.

The loader's ``progress`` callback receives strings (the app shows them in its status line); a stage
that can count its work (converting, loading, calibrating) reports ``count_text(label, done, total)``
so a console can draw one bar per stage. Torch-free.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

Progress = Callable[[str], None]
"""What loading reports to: one short string at a time."""

_COUNT = re.compile(r"^(?P<label>.+): (?P<done>\d+)/(?P<total>\d+)$")


class Count(NamedTuple):
    label: str
    done: int
    total: int


def count_text(label: str, done: int, total: int) -> str:
    """The progress string of a stage ``label`` at ``done`` of ``total`` steps."""
    return f"{label}: {done}/{total}"


def parse_count(text: str) -> Count | None:
    """The stage count in ``text``, or None when it is a note."""
    match = _COUNT.match(text)
    if match is None:
        return None
    return Count(match["label"], int(match["done"]), int(match["total"]))


def stage(report: Progress, label: str, total: int) -> Callable[[int], None]:
    """A counter for one stage: ``step(done)`` reports ``label: done/total`` (0 is reported now)."""

    def step(done: int) -> None:
        report(count_text(label, done, total))

    step(0)
    return step


def progress_line(text: str) -> str:
    """``text`` for a status line: a stage's count as a percentage, a note as it is."""
    count = parse_count(text)
    if count is None:
        return text
    return f"{count.label} {100 * count.done // max(1, count.total)}%"
