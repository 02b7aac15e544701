"""The gauge bar: accepted tokens per step (current, mean, sparkline), tokens/s and measured speedup."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Static

from ..engine import Gauges, sparkline

SPEEDUP_HELP = (
    "Speedup is measured, not assumed: tokens/s of this answer divided by the plain-decoding tokens/s "
    "of the same model on this machine. The plain speed comes from a short calibration run when the "
    "model loads, and is refreshed every time you generate with Medusa off (ctrl+t)."
)
ACCEPT_HELP = (
    "Accepted tokens per step: how many tokens one forward pass produced (1 = plain decoding). "
    "Shown for the latest step, as the mean over the answer, and as a sparkline of recent steps."
)


FALLBACK_HELP = (
    "Automatic fallback: plain decoding was measured faster than Medusa for this model on this machine, "
    "so the engine decodes plainly and tries Medusa again every few dozen steps (Settings: Automatic fallback)."
)


def speedup_text(gauges: Gauges) -> str:
    speedup = gauges.speedup
    if speedup is None:
        return "speedup –"
    return f"speedup {speedup:.2f}×"


SPARK_WIDTH = 12


class GaugeBar(Horizontal):
    """Live while streaming; shows the last finished answer's figures when idle."""

    DEFAULT_CSS = """
    GaugeBar { height: 1; }
    """

    def compose(self) -> ComposeResult:
        yield Static("", id="gauge-mode")
        yield Static("", id="gauge-accepted")
        yield Static("", id="gauge-spark")
        yield Static("", id="gauge-tps")
        yield Static("", id="gauge-speedup")

    def on_mount(self) -> None:
        self.query_one("#gauge-accepted").tooltip = ACCEPT_HELP
        self.query_one("#gauge-spark").tooltip = ACCEPT_HELP
        self.query_one("#gauge-speedup").tooltip = SPEEDUP_HELP
        self.query_one("#gauge-tps").tooltip = "Decoding speed of the answer, prefill excluded."

    def show(self, gauges: Gauges | None, medusa: bool, baseline: float | None) -> None:
        mode = self.query_one("#gauge-mode", Static)
        fallback = medusa and gauges is not None and gauges.fallback
        mode.update("Medusa ON → plain (faster here)" if fallback else "Medusa ON" if medusa else "Medusa OFF")
        mode.tooltip = FALLBACK_HELP if fallback else None
        mode.set_class(medusa, "-on")
        mode.set_class(not medusa, "-off")
        accepted = self.query_one("#gauge-accepted", Static)
        spark = self.query_one("#gauge-spark", Static)
        tps = self.query_one("#gauge-tps", Static)
        speedup = self.query_one("#gauge-speedup", Static)
        base = f" · plain {baseline:.1f} tok/s" if baseline else " · plain speed: measuring…"
        if gauges is None or gauges.steps == 0:
            accepted.update("accepted/step –")
            spark.update("")
            tps.update("– tok/s")
            speedup.update("speedup –" + base)
            return
        accepted.update(f"accepted/step {gauges.current} · mean {gauges.mean_accepted:.2f}")
        spark.update(sparkline(gauges.recent, width=SPARK_WIDTH))
        tps.update(f"{gauges.tokens_per_s:.1f} tok/s")
        speedup.update(speedup_text(gauges) + base)
