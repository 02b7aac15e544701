"""The chat footer: compact; on narrow terminals the essential keys only, with short labels.

Every other key stays in F1 help and the command palette (ctrl+p).
"""

from __future__ import annotations

from textual import events
from textual.app import ComposeResult
from textual.widgets import Footer

ESSENTIAL = ("stop", "regenerate", "toggle_medusa", "help", "settings", "history", "models", "quit")
SHORT = {"Regenerate": "Redo"}
WIDE = 100  # from this width on every key is shown with its full label


class ChatFooter(Footer):
    """A :class:`Footer` that keeps the essential keys when the terminal is narrow."""

    def __init__(self) -> None:
        super().__init__(compact=True)
        self._narrow: bool | None = None

    def compose(self) -> ComposeResult:
        narrow = self.app.size.width < WIDE
        for widget in super().compose():
            if narrow and "-command-palette" in widget.classes:
                continue  # ctrl+p still opens it; the welcome text and F1 say so
            action = getattr(widget, "action", "")
            if narrow and action and action not in ESSENTIAL:
                continue
            if narrow and hasattr(widget, "description"):
                widget.description = SHORT.get(widget.description, widget.description)
            yield widget

    def on_resize(self, event: events.Resize) -> None:
        narrow = self.app.size.width < WIDE
        if narrow != self._narrow:
            self._narrow = narrow
            self.call_after_refresh(self.recompose)
