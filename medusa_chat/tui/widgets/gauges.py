"""The gauge bar: accepted tokens per step (current, mean, sparkline), tokens/s and measured speedup.

All figures come from one :class:`Gauges` (one answer's counters). The parts are packed into as few lines
as the width allows, never broken inside a part; narrow terminals get short labels.
"""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.geometry import Size
from textual.widget import Widget

from ..stats import EARLIER_PLAIN, FEW_STEPS, RELIABLE_STEPS, Gauges, sparkline

SPEEDUP_HELP = (
    "Speedup is measured, not assumed: tokens/s of this answer divided by the plain-decoding tokens/s "
    "of the same model on this machine. With automatic fallback on, each answer times a few plain steps "
    "of its own (at its own context length) and divides by their median. Until it has, the latest plain "
    "speed of this session stands in (an earlier answer, Medusa off with ctrl+t, compare with ctrl+b, or "
    "the short run at load) and the speedup is shown as `~` with a note, as it is for answers of fewer "
    f"than {RELIABLE_STEPS} steps. A speedup above the tokens per step is impossible, so it is then shown "
    "as `?` (the plain speed is stale: the machine was busier when it was measured)."
)
ACCEPT_HELP = (
    "Accepted tokens per step: how many tokens one forward pass produced (1 = plain decoding). "
    "Shown for the latest step, as the mean over the answer, and as a sparkline of recent steps."
)
FALLBACK_HELP = (
    "`→ plain` is automatic fallback: plain decoding was measured faster than Medusa for this model on this "
    "machine, so the engine decodes plainly and tries Medusa again ever less often. Such an answer says "
    "so on a line of its own and claims no speedup (Settings: Automatic fallback)."
)
GAUGE_HELP = f"{ACCEPT_HELP}\n\n{SPEEDUP_HELP}\n\n{FALLBACK_HELP}"

SPARK_WIDTH = 12
ORDER = ("mode", "accepted", "spark", "tps", "speedup", "plain")


def gauge_parts(
    gauges: Gauges | None, medusa: bool, baseline: float | None, *, measuring: bool = False, short: bool = False
) -> dict[str, str]:
    """The texts of the bar. ``medusa``: the toggle (used when no figures are shown yet)."""
    note = gauges.speedup_note if gauges is not None else None
    if gauges is not None and gauges.plain_tps:
        baseline = gauges.plain_tps  # this answer's own plain speed, the one its speedup divides by
    if baseline:
        earlier = " (timed earlier)" if note == EARLIER_PLAIN and not short else ""
        plain = f"plain {baseline:.1f} tok/s{earlier}"
    elif measuring:
        plain = "plain speed: measuring…"
    else:
        plain = "plain speed –"
    parts = {"plain": plain}
    if gauges is None or gauges.steps == 0:
        parts["mode"] = "Medusa ON" if medusa else "Medusa OFF"
        parts["accepted"] = "tok/step –" if short else "accepted/step –"
        parts["tps"] = "– tok/s"
        parts["speedup"] = "speedup –"
        return parts
    mode = gauges.mode
    running = gauges.final is None
    if mode in ("fallback", "mixed") or (running and gauges.medusa and gauges.fallback):
        parts["mode"] = "Medusa ON → plain"
    else:
        parts["mode"] = "Medusa ON" if gauges.medusa else "Medusa OFF"
    if not running and gauges.medusa != medusa:
        parts["mode"] += f" (next: {'ON' if medusa else 'OFF'})"
    mean = f"{gauges.mean_accepted:.2f}"
    parts["accepted"] = (
        f"{gauges.current}/step · mean {mean}" if short else f"accepted/step {gauges.current} · mean {mean}"
    )
    parts["spark"] = sparkline(gauges.recent, width=SPARK_WIDTH)
    parts["tps"] = f"{gauges.tokens_per_s:.1f} tok/s"
    if gauges.speedup is not None:
        rough = "~" if note else ""  # not yet reliable: the plain speed is from earlier, or few steps so far
        few = f" ({FEW_STEPS})" if note == FEW_STEPS and not short else ""
        parts["speedup"] = f"speedup {rough}{gauges.speedup:.2f}×{few}"
    elif gauges.stale_baseline:
        parts["speedup"] = "speedup ?"
    elif mode in ("plain", "fallback"):
        parts["speedup"] = "plain decoding" if short else "speedup – (plain decoding)"
    else:
        parts["speedup"] = "speedup –"
    return parts


def pack(texts: list[str], width: int, gap: int = 2) -> list[list[str]]:
    """Greedy line packing of whole parts into ``width`` columns."""
    lines: list[list[str]] = [[]]
    used = 0
    for text in texts:
        need = len(text) + (gap if lines[-1] else 0)
        if lines[-1] and used + need > width:
            lines.append([])
            used, need = 0, len(text)
        lines[-1].append(text)
        used += need
    return lines


class GaugeBar(Widget):
    """Live while streaming; shows the last finished answer's figures when idle. Wraps on narrow terminals."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "gauge--on", "gauge--off", "gauge--spark", "gauge--tps", "gauge--muted",
    }

    DEFAULT_CSS = """
    GaugeBar { height: auto; padding: 0 1; }
    GaugeBar > .gauge--on { color: $success; text-style: bold; }
    GaugeBar > .gauge--off { color: $warning; text-style: bold; }
    GaugeBar > .gauge--spark { color: $success; }
    GaugeBar > .gauge--tps { color: $accent; }
    GaugeBar > .gauge--muted { color: $text-muted; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.parts: dict[str, str] = gauge_parts(None, True, None)
        self._args: tuple[Gauges | None, bool, float | None, bool] = (None, True, None, False)
        self._height = 0  # lines, as last shown

    def on_mount(self) -> None:
        self.tooltip = GAUGE_HELP

    def show(self, gauges: Gauges | None, medusa: bool, baseline: float | None, *, measuring: bool = False) -> None:
        self._args = (gauges, medusa, baseline, measuring)
        self.parts = gauge_parts(gauges, medusa, baseline, measuring=measuring)
        height = len(self._lines(self.content_region.width or self.size.width)[1])
        # A new layout of the screen costs more the longer the transcript: only when the bar's height changes.
        self.refresh(layout=height != self._height)
        self._height = height

    def text(self) -> str:
        """All parts on one line (for tests and logs)."""
        return "  ".join(self.parts[k] for k in ORDER if self.parts.get(k))

    def _lines(self, width: int) -> tuple[dict[str, str], list[list[str]]]:
        gauges, medusa, baseline, measuring = self._args
        parts = self.parts
        lines = pack([parts[k] for k in ORDER if parts.get(k)], max(width, 1))
        if len(lines) > 2:
            parts = gauge_parts(gauges, medusa, baseline, measuring=measuring, short=True)
            lines = pack([parts[k] for k in ORDER if parts.get(k)], max(width, 1))
        return parts, lines

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return len(self._lines(width)[1])

    def render(self) -> Text:
        parts, lines = self._lines(self.content_region.width or self.size.width)
        styles = {
            "mode": "gauge--on" if parts["mode"].startswith("Medusa ON") else "gauge--off",
            "spark": "gauge--spark",
            "tps": "gauge--tps",
            "plain": "gauge--muted",
        }
        by_text = {}
        for key in ORDER:
            if parts.get(key):
                by_text.setdefault(parts[key], key)
        text = Text(no_wrap=True, overflow="ellipsis")
        for n, line in enumerate(lines):
            if n:
                text.append("\n")
            for i, part in enumerate(line):
                if i:
                    text.append("  ")
                key = by_text.get(part, "")
                style = self.get_component_rich_style(styles[key], partial=True) if key in styles else ""
                text.append(part, style)
        return text
