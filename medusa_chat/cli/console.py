"""Load progress on the console: one bar per counted stage on a terminal, one line per stage elsewhere."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from ..progress import parse_count

BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]"


class ConsoleProgress:
    """A loader ``progress`` callback writing to ``stream`` (stderr by default).

    A stage's counts (``"label: done/total"``) move one bar, drawn when ``stream`` is a terminal (or
    ``bars`` says so); elsewhere the stage prints its label once. A stage ends at its total; notes print as
    lines (above a bar still moving).
    Use it as a context manager, or call :meth:`close`, so the last bar ends its line.
    """

    def __init__(self, stream: TextIO | None = None, *, bars: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.bars = _is_terminal(self.stream) if bars is None else bars
        self._label: str | None = None
        self._bar: Any = None

    def __call__(self, text: str) -> None:
        count = parse_count(text)
        if count is None:
            self._note(text)
            return
        if count.label != self._label:
            self.close()
            self._label = count.label
            if self.bars:
                from tqdm import tqdm

                self._bar = tqdm(
                    total=count.total,
                    desc=count.label,
                    file=self.stream,
                    bar_format=BAR_FORMAT,
                    dynamic_ncols=True,
                    leave=True,
                )
            else:
                self._note(count.label)
        if self._bar is not None:
            self._bar.total = count.total
            self._bar.update(count.done - self._bar.n)
        if count.done >= count.total:
            self.close()  # the stage is over: what follows prints below it

    def _note(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        """End the current stage's bar (its last state stays on screen)."""
        if self._bar is not None:
            self._bar.close()
        self._bar = None
        self._label = None

    def __enter__(self) -> ConsoleProgress:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
