"""Compare mode: the last prompt re-run with Medusa off and on, side by side."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Markdown, Static

from ...engine.events import GenerationStats
from ..stats import plural
from ..widgets.message import chat_markdown

if TYPE_CHECKING:
    from .chat import CompareResult


def _column_stats(stats: GenerationStats, speedup: float | None) -> str:
    parts = [
        f"{plural(stats.new_tokens, 'token')} in {plural(stats.steps, 'step')}",
        f"{stats.mean_accepted:.2f} tok/step",
        f"{stats.tokens_per_s:.1f} tok/s",
    ]
    if speedup is not None:
        parts.append(f"speedup {speedup:.2f}×")
    return " · ".join(parts)


class CompareScreen(ModalScreen[None]):
    """Both answers with their speed; says whether the outputs are identical (they must be under greedy)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q", "dismiss", "Close", id="compare.close")]

    def __init__(self, result: CompareResult) -> None:
        super().__init__(id="compare")
        self.result = result

    def compose(self) -> ComposeResult:
        r = self.result
        if r.identical:
            verdict = "Outputs identical: yes (same tokens)"
        else:
            verdict = "Outputs identical: NO (expected only when sampling, i.e. temperature > 0)"
        with Vertical(id="compare-dialog"):
            yield Static(f"Compare · {r.prompt[:70]}", id="compare-title")
            yield Static(verdict, id="compare-verdict", classes="-same" if r.identical else "-differ")
            with Horizontal(id="compare-columns"):
                with Vertical(classes="compare-column", id="compare-plain"):
                    yield Static("Medusa OFF (plain decoding)", classes="compare-heading")
                    yield Static(_column_stats(r.plain, 1.0), classes="compare-stats")
                    with VerticalScroll():
                        yield Markdown(r.plain.text, parser_factory=chat_markdown)
                with Vertical(classes="compare-column", id="compare-medusa"):
                    yield Static("Medusa ON", classes="compare-heading")
                    yield Static(_column_stats(r.medusa, r.speedup), classes="compare-stats")
                    with VerticalScroll():
                        yield Markdown(r.medusa.text, parser_factory=chat_markdown)
            yield Static(
                "Speedup here = Medusa tok/s ÷ plain tok/s of these two runs (same prompt, same settings).",
                id="compare-note",
            )
        yield Footer()
