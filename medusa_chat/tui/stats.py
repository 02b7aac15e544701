"""Figures of one generation for the gauges and the transcript: pure maths over step events and stats."""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field
from itertools import groupby
from operator import itemgetter
from typing import Any

from ..engine.events import GenerationStats, StepEvent

SPARK_WINDOW = 48


def plural(n: int, word: str) -> str:
    """``1 token``, ``2 tokens``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


SPEEDUP_SLACK = 1.05  # measured speedup may exceed tokens/step by timing noise only
PLAIN_WINDOW = 16  # latest timed plain steps of an answer whose median is its plain speed
MIN_PLAIN_STEPS = 6  # timed plain steps an answer needs for a plain speed of its own
RELIABLE_STEPS = 16  # steps an answer needs before its speedup is more than a first impression
FEW_STEPS = "few steps"
EARLIER_PLAIN = "plain timed earlier"


@dataclass
class Gauges:
    """Figures of one generation: pure maths over its step events, then over its final stats.

    Every figure (steps, tokens, tokens/s, tokens/step, speedup) comes from the same counters, so the
    gauge bar and the answer's line agree. A step that emits no token (the text flushed at the end) is
    not a step. ``medusa`` is what the engine actually did once the answer ends (no heads: plain).

    The speedup compares like with like where it can: a Medusa step's cost relative to a plain one
    (:attr:`step_ratio`) comes from this answer's own plain steps (the automatic fallback's probes) and the
    Medusa steps timed right around them, at the same context length and under the same load on the machine.
    Until the answer has such a probe, ``baseline_tps`` (the session's latest plain measurement) stands in and
    the speedup carries a note. Both sides are costed by medians: a stall of the machine in one step moves neither.
    """

    medusa: bool = True
    baseline_tps: float | None = None
    steps: int = 0
    tokens: int = 0
    head_tokens: int = 0
    decode_time: float = 0.0
    current: int = 0
    recent: deque[int] = field(default_factory=lambda: deque(maxlen=SPARK_WINDOW))
    final: GenerationStats | None = None
    fallback: bool = False  # the latest step was plain decoding chosen by automatic fallback
    fallback_steps: int = 0
    plain_tps: float | None = None  # this answer's own plain speed (median over its timed plain steps)
    plain_times: deque[float] = field(default_factory=lambda: deque(maxlen=PLAIN_WINDOW), init=False, repr=False)
    medusa_times: list[float] = field(default_factory=list, init=False, repr=False)  # this answer's Medusa steps
    timed: list[tuple[bool, float]] = field(default_factory=list, init=False, repr=False)  # (plain, s) in order
    plain_steps: int = field(default=0, init=False, repr=False)  # plain steps inside a Medusa answer (fallback)
    stored_steady_tps: float | None = field(default=None, init=False, repr=False)  # from a saved answer
    _plain_run: bool = field(default=False, init=False, repr=False)  # the latest step was a plain one

    def add(self, event: StepEvent) -> None:
        self.decode_time += max(event.step_time, 0.0)
        if event.accepted <= 0:
            return
        plain = event.tree_size == 1
        if plain and self._plain_run and event.step_time > 0:  # a run's first plain step only picks a token
            self.plain_times.append(event.step_time)
            self.timed.append((True, event.step_time))
            if len(self.plain_times) >= MIN_PLAIN_STEPS:
                self.plain_tps = 1.0 / statistics.median(self.plain_times)
        if plain:
            self.plain_steps += 1
        elif event.step_time > 0:
            self.medusa_times.append(event.step_time)
            if not self._plain_run:  # the first Medusa step after plain ones also feeds their pending token
                self.timed.append((False, event.step_time))
        self._plain_run = plain
        self.fallback = event.fallback
        self.fallback_steps += bool(event.fallback)
        self.steps += 1
        self.tokens += event.accepted
        self.head_tokens += sum(1 for h in event.from_heads if h)
        self.current = event.accepted
        self.recent.append(event.accepted)

    def finish(self, stats: GenerationStats) -> None:
        """Adopt the engine's own totals (the same counters the events summed to)."""
        self.final = stats
        self.medusa = bool(stats.medusa)
        self.steps = stats.steps
        self.tokens = stats.new_tokens
        self.decode_time = stats.decode_time
        self.fallback_steps = min(stats.fallback_steps, stats.steps)

    @property
    def mode(self) -> str:
        """plain | medusa | fallback (every step plain by automatic fallback) | mixed (some steps)."""
        if not self.medusa:
            return "plain"
        if self.fallback_steps and self.fallback_steps >= self.steps:
            return "fallback"
        return "mixed" if self.fallback_steps else "medusa"

    @property
    def mean_accepted(self) -> float:
        return self.tokens / self.steps if self.steps else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.decode_time if self.decode_time > 0 else 0.0

    @property
    def baseline(self) -> float | None:
        """The plain tokens/s the speedup divides by: this answer's own, else the session's latest."""
        return self.plain_tps or self.baseline_tps

    @property
    def step_ratio(self) -> float | None:
        """A Medusa step's time over a plain step's, measured side by side: for each run of this answer's timed
        plain steps, the median of the Medusa steps timed just before and after it (up to ``PLAIN_WINDOW`` each
        side) over the run's median; the median over runs. None before a run has enough steps on both sides."""
        ratios: list[float] = []
        start = 0
        for plain, run in groupby(self.timed, key=itemgetter(0)):
            times = [t for _, t in run]
            stop = start + len(times)
            near = [t for p, t in self.timed[max(0, start - PLAIN_WINDOW) : stop + PLAIN_WINDOW] if not p]
            if plain and len(times) >= MIN_PLAIN_STEPS and len(near) >= MIN_PLAIN_STEPS:
                ratios.append(statistics.median(near) / statistics.median(times))
            start = stop
        return max(statistics.median(ratios), 1.0) if ratios else None  # a tree step does a plain one's work and more

    @property
    def steady_tps(self) -> float:
        """Tokens/s with each step costed at its mode's median in this answer (a plain one at the plain speed the
        speedup divides by, a Medusa one at :attr:`step_ratio` times that where measured): the answer's speed
        without the stalls (a busy UI thread, another process) that a median plain speed never sees.
        ``tokens_per_s`` until Medusa steps are timed."""
        if self.stored_steady_tps is not None:
            return self.stored_steady_tps
        if not self.medusa_times or not self.baseline:
            return self.tokens_per_s
        ratio = self.step_ratio
        if ratio is not None:
            seconds = ((self.steps - self.plain_steps) * ratio + self.plain_steps) / self.baseline
        else:
            seconds = len(self.medusa_times) * statistics.median(self.medusa_times) + self.plain_steps / self.baseline
        return self.tokens / seconds

    @property
    def raw_speedup(self) -> float | None:
        """This answer's steady tokens/s over the measured plain tokens/s; None for plain answers."""
        if self.mode in ("plain", "fallback") or not self.baseline or self.tokens_per_s <= 0:
            return None
        return self.steady_tps / self.baseline

    @property
    def speedup_note(self) -> str | None:
        """Why the speedup is not yet reliable (too few steps, plain not timed in this answer), or None."""
        if self.speedup is None:
            return None
        if self.steps < RELIABLE_STEPS:
            return FEW_STEPS
        return None if self.plain_tps else EARLIER_PLAIN

    @property
    def stale_baseline(self) -> bool:
        """The plain speed cannot be right: a step never costs less than a plain step, so the speedup
        cannot exceed the tokens per step (the machine was busier when plain speed was measured)."""
        raw = self.raw_speedup
        return raw is not None and raw > max(self.mean_accepted, 1.0) * SPEEDUP_SLACK

    @property
    def speedup(self) -> float | None:
        """The measured speedup, when it is consistent with the other figures."""
        return None if self.stale_baseline else self.raw_speedup

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "medusa": self.medusa,
            "steps": self.steps,
            "new_tokens": self.tokens,
            "mean_accepted": round(self.mean_accepted, 4),
            "tokens_per_s": round(self.tokens_per_s, 3),
            "recent": list(self.recent),
        }
        if self.fallback_steps:
            out["fallback_steps"] = self.fallback_steps
        if self.speedup is not None:
            out["speedup"] = round(self.speedup, 4)
            out["steady_tps"] = round(self.steady_tps, 3)
        if self.baseline_tps:
            out["baseline_tps"] = round(self.baseline_tps, 3)
        if self.plain_tps:
            out["plain_tps"] = round(self.plain_tps, 3)
        if self.stale_baseline:
            out["stale_baseline"] = True
        if self.final is not None:
            out.update(
                prefill_time=round(self.final.prefill_time, 5),
                decode_time=round(self.final.decode_time, 5),
                prompt_tokens=self.final.prompt_tokens,
                reused_tokens=self.final.reused_tokens,
                stop_reason=self.final.stop_reason,
            )
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Gauges:
        g = cls(medusa=bool(data.get("medusa", True)))
        g.steps = int(data.get("steps", 0))
        g.tokens = int(data.get("new_tokens", 0))
        g.fallback_steps = int(data.get("fallback_steps", 0))
        g.recent.extend(int(x) for x in data.get("recent", []))
        g.current = g.recent[-1] if g.recent else 0
        tps = float(data.get("tokens_per_s", 0.0) or 0.0)
        if "decode_time" in data and float(data["decode_time"] or 0) > 0:
            g.decode_time = float(data["decode_time"])
        else:
            g.decode_time = g.tokens / tps if tps > 0 else 0.0
        if data.get("steady_tps"):
            g.stored_steady_tps = float(data["steady_tps"])
        if data.get("plain_tps"):
            g.plain_tps = float(data["plain_tps"])
        if data.get("baseline_tps"):
            g.baseline_tps = float(data["baseline_tps"])
        elif data.get("speedup") and tps > 0:
            g.baseline_tps = g.steady_tps / float(data["speedup"])
        return g


def summary_lines(stats: dict[str, Any]) -> list[str]:
    """An answer's figures: one line of numbers, and a line of its own for a fallback answer."""
    if not stats or "new_tokens" not in stats:
        return []
    g = Gauges.from_dict(stats)
    parts = [plural(g.tokens, "token"), plural(g.steps, "step")]
    if g.steps:
        parts.append(f"{g.mean_accepted:.2f} tok/step")
    if g.tokens_per_s > 0:
        parts.append(f"{g.tokens_per_s:.1f} tok/s")
    if g.speedup is not None:
        note = g.speedup_note
        parts.append(f"~{g.speedup:.2f}× plain ({note})" if note else f"{g.speedup:.2f}× plain")
    elif stats.get("stale_baseline"):
        parts.append("speedup ? (plain speed stale)")
    parts.append({"plain": "Medusa off", "fallback": "decoded plainly"}.get(g.mode, "Medusa on"))
    lines = [" · ".join(parts)]
    if g.mode in ("fallback", "mixed"):
        lines.append(
            f"↳ automatic fallback: {g.fallback_steps} of {plural(g.steps, 'step')} decoded plainly "
            "(plain measured faster here)"
        )
    return lines


def sparkline(values: list[int] | deque[int], width: int = 24) -> str:
    """A text sparkline of accepted tokens per step (1 = plain step)."""
    bars = "▁▂▃▄▅▆▇█"
    data = list(values)[-width:]
    if not data:
        return ""
    top = max(max(data), 2)
    return "".join(bars[min(len(bars) - 1, round((v - 1) / (top - 1) * (len(bars) - 1)))] for v in data)
