"""One message of the transcript: Markdown (streamed), or token-coloured plain text, plus its figures.

Single newlines inside a paragraph are line breaks (a poem, an address), as in chat apps; everything
else is CommonMark (code fences, lists and tables are untouched).
"""

from __future__ import annotations

import re
from typing import ClassVar

from markdown_it import MarkdownIt
from markdown_it.rules_core import StateCore
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Markdown, Static
from textual.widgets.markdown import MarkdownStream

from ..stats import Gauges, sparkline, summary_lines

CODE_BLOCK = re.compile(r"```[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


COLOUR_LEGEND = "Coloured tokens (plain text, no Markdown) · bold green = drafted by a head · ctrl+g for Markdown"


def _hard_breaks(state: StateCore) -> None:
    for token in state.tokens:
        for child in token.children or ():
            if child.type == "softbreak":
                child.type = "hardbreak"


def chat_markdown() -> MarkdownIt:
    """Textual's gfm-like parser where a single newline in a paragraph is a line break."""
    parser = MarkdownIt("gfm-like")
    parser.core.ruler.push("medusa_hard_breaks", _hard_breaks)
    return parser


def code_blocks(text: str) -> list[str]:
    """Fenced code blocks of a Markdown text (an unterminated last block counts)."""
    return [m.group(1).rstrip("\n") for m in CODE_BLOCK.finditer(text)]


class MessageView(Vertical):
    """A user or assistant message. Assistant messages stream through a ``MarkdownStream``."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {"message--head-token", "message--base-token"}

    DEFAULT_CSS = """
    MessageView { height: auto; }
    MessageView > .message--body { height: auto; }
    MessageView .message--head-token { color: $success; text-style: bold; }
    MessageView .message--base-token { color: $foreground; }
    """

    def __init__(
        self,
        role: str,
        content: str = "",
        *,
        model: str = "",
        stats: dict | None = None,
        stopped: bool = False,
        colour: bool = False,
        stored_id: int | None = None,
    ) -> None:
        super().__init__(classes=f"message -{role}")
        self.role = role
        self.content = content
        self.model = model
        self.stats = stats or {}
        self.stopped = stopped
        self.colour = colour
        self.stored_id = stored_id
        self.segments: list[tuple[str, bool]] = [(content, False)] if content else []
        self.streaming = False
        self._stream: MarkdownStream | None = None

    def compose(self) -> ComposeResult:
        label = "You" if self.role == "user" else (f"Assistant · {self.model}" if self.model else "Assistant")
        yield Static(label, classes="message--role")
        if self.role == "user":
            yield Static(Text(self.content), classes="message--body")
        else:
            yield Markdown(self.content, classes="message--body", parser_factory=chat_markdown)
            yield Static("", classes="message--coloured message--body")
            yield Static("", classes="message--stats")

    def on_mount(self) -> None:
        if self.role == "assistant":
            self._apply_mode()
            self._update_stats()

    # --- streaming --------------------------------------------------------------------------------

    def start_stream(self) -> None:
        self.streaming = True
        self.add_class("-streaming")
        self._stream = Markdown.get_stream(self.query_one(Markdown))

    async def append(self, text: str, segments: list[tuple[str, bool]]) -> None:
        if not text:
            return
        self.content += text
        for piece, flag in segments:
            if self.segments and self.segments[-1][1] == flag:
                self.segments[-1] = (self.segments[-1][0] + piece, flag)
            else:
                self.segments.append((piece, flag))
        if self._stream is not None:
            await self._stream.write(text)
        if self.colour:
            self._render_coloured()

    async def finish(self, *, stopped: bool, stats: dict | None) -> None:
        self.streaming = False
        self.remove_class("-streaming")
        self.stopped = stopped
        if stats is not None:
            self.stats = stats
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        # A full re-render repairs partial blocks (an unterminated code fence when stopped).
        await self.query_one(Markdown).update(self.content)
        self._apply_mode()
        self._update_stats()

    # --- display ----------------------------------------------------------------------------------

    def set_colour(self, colour: bool) -> None:
        self.colour = colour
        if self.role == "assistant" and self.is_mounted:
            self._apply_mode()

    def _apply_mode(self) -> None:
        self.query_one(Markdown).display = not self.colour
        coloured = self.query_one(".message--coloured", Static)
        coloured.display = self.colour
        if self.colour:
            self._render_coloured()

    def _render_coloured(self) -> None:
        head = self.get_component_rich_style("message--head-token", partial=True)
        base = self.get_component_rich_style("message--base-token", partial=True)
        text = Text(COLOUR_LEGEND + "\n", style="dim italic")
        for piece, flag in self.segments:
            text.append(piece, head if flag else base)
        self.query_one(".message--coloured", Static).update(text)

    def _update_stats(self) -> None:
        line = self.query_one(".message--stats", Static)
        parts = []
        if self.stopped:
            parts.append("■ stopped")
        lines = summary_lines(self.stats)
        if lines:
            spark = sparkline(Gauges.from_dict(self.stats).recent, width=16)
            parts.append(lines[0] + (f"  {spark}" if spark else ""))
        line.update(Text("\n".join(["  ".join(parts), *lines[1:]])))
        line.display = bool(parts)
        self.set_class(self.stopped, "-stopped")
