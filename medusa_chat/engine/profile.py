"""Where a decoding step's time goes: named sections of each step, timed and summed over steps."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch

SECTIONS = ("forward", "tree forward", "logits", "heads", "acceptance", "compaction")
"""Sections the generator times; the rest of a step (Python, detokenising, allocation) is ``other``."""


class StepProfile:
    """Seconds per named section, summed over the steps recorded with :meth:`add_step`."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.steps = 0
        self.step_seconds = 0.0
        self._cuda = torch.device(device).type == "cuda"

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        if self._cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        try:
            yield
        finally:
            if self._cuda:
                torch.cuda.synchronize()
            self.seconds[name] += time.perf_counter() - started

    def add_step(self, seconds: float) -> None:
        self.steps += 1
        self.step_seconds += seconds

    def per_step_ms(self) -> dict[str, float]:
        """Milliseconds per step in each section, ``other`` and ``total``."""
        if not self.steps:
            return {}
        ms = {name: 1000 * self.seconds[name] / self.steps for name in SECTIONS if name in self.seconds}
        total = 1000 * self.step_seconds / self.steps
        return {**ms, "other": max(0.0, total - sum(ms.values())), "total": total}
