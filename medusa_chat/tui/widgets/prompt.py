"""The prompt: a multi-line TextArea where Enter sends and Up/Down at the edges recall earlier prompts."""

from __future__ import annotations

from typing import ClassVar

from textual import events
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widgets import TextArea


class PromptInput(TextArea):
    """Enter sends; Shift+Enter or Ctrl+J insert a newline; Up on the first line / Down on the last
    line walk through earlier prompts (the draft being typed is kept)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+j,shift+enter", "newline", "Newline", show=False, id="prompt.newline"),
    ]

    class Submitted(Message):
        def __init__(self, prompt: PromptInput, text: str) -> None:
            super().__init__()
            self.prompt = prompt
            self.text = text

    def __init__(self, *, id: str | None = None, placeholder: str = "") -> None:
        super().__init__(
            id=id,
            soft_wrap=True,
            show_line_numbers=False,
            tab_behavior="focus",
            compact=True,
            placeholder=placeholder,
        )
        self.prompts: list[str] = []
        self._index: int | None = None  # position in history while recalling
        self._draft = ""

    def remember(self, text: str) -> None:
        if text.strip() and (not self.prompts or self.prompts[-1] != text):
            self.prompts.append(text)
        self._index = None

    def action_newline(self) -> None:
        start, end = self.selection
        self._replace_via_keyboard("\n", start, end)

    def _recall(self, step: int) -> bool:
        if not self.prompts:
            return False
        if self._index is None:
            if step > 0:
                return False
            self._draft = self.text
            index = len(self.prompts) - 1
        else:
            index = self._index + step
        if index >= len(self.prompts):
            self._index = None
            self.load_text(self._draft)
            self.move_cursor(self.document.end)
            return True
        index = max(index, 0)
        self._index = index
        self.load_text(self.prompts[index])
        self.move_cursor(self.document.end)
        return True

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            text = self.text
            if text.strip():
                self.post_message(self.Submitted(self, text))
            return
        if any(b.action == "newline" for b in self._bindings.key_to_bindings.get(event.key, ())):
            # Now, in order with the keys around it: a binding's action runs only after the key has bubbled
            # up to the app, by which time the characters typed after it may already be in.
            event.stop()
            event.prevent_default()
            self.action_newline()
            return
        await super()._on_key(event)

    def action_cursor_up(self, select: bool = False) -> None:
        if not select and self.cursor_location[0] == 0 and self.selection.is_empty and self._recall(-1):
            return
        super().action_cursor_up(select)

    def action_cursor_down(self, select: bool = False) -> None:
        last = self.document.line_count - 1
        if not select and self.cursor_location[0] == last and self.selection.is_empty and self._recall(+1):
            return
        super().action_cursor_down(select)
