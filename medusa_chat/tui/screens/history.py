"""Past conversations: open, rename, delete, export."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Static

from ...store import Conversation
from ..stats import plural
from .dialogs import Confirm, TextPrompt

if TYPE_CHECKING:
    from ..app import MedusaChatApp


class HistoryScreen(ModalScreen[int | None]):
    """Dismisses with the id of the conversation to open, or None."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss_none", "Close", id="history.close"),
        Binding("enter", "open", "Open", id="history.open", priority=True),
        Binding("r", "rename", "Rename", id="history.rename"),
        Binding("d,delete", "delete", "Delete", id="history.delete"),
        Binding("e", "export", "Export", id="history.export"),
    ]

    def __init__(self) -> None:
        super().__init__(id="history")

    @property
    def chat_app(self) -> MedusaChatApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        with Vertical(id="history-dialog"):
            yield Static("Conversations", id="history-title")
            yield DataTable(id="history-table", cursor_type="row", zebra_stripes=True)
            yield Static("", id="history-empty")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_column("title", key="title")
        table.add_column("model", key="model")
        table.add_column("messages", key="messages")
        table.add_column("updated", key="updated")
        self.reload()

    def reload(self) -> None:
        table = self.query_one(DataTable)
        table.clear()
        found = self.chat_app.history_call("list the conversations", lambda s: s.list_conversations())
        conversations = found or []
        for c in conversations:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(c.updated))
            table.add_row(c.title or "(untitled)", c.model, str(c.message_count), when, key=str(c.id))
        self.query_one("#history-empty", Static).update(
            "" if conversations else "No conversations yet." if found is not None else "History is unavailable."
        )

    def selected_id(self) -> int | None:
        table = self.query_one(DataTable)
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        return int(key.value) if key.value is not None else None

    def action_open(self) -> None:
        conversation_id = self.selected_id()
        if conversation_id is not None:
            self.dismiss(conversation_id)

    @on(DataTable.RowSelected)
    def _row_selected(self) -> None:
        self.action_open()

    def action_dismiss_none(self) -> None:
        self.dismiss(None)

    def _selected(self) -> Conversation | None:
        """The highlighted conversation as the history holds it (None: no row, or history unreadable)."""
        conversation_id = self.selected_id()
        if conversation_id is None:
            return None
        return self.chat_app.history_call("read the conversation", lambda store: store.get(conversation_id))

    def action_rename(self) -> None:
        conversation = self._selected()
        if conversation is None:
            return
        conversation_id = conversation.id

        def done(value: str | None) -> None:
            if value is not None and value.strip():
                title, cid = value, conversation_id
                self.chat_app.history_call("rename the conversation", lambda store: store.rename(cid, title))
                self.reload()

        self.app.push_screen(TextPrompt("Rename conversation", conversation.title, id="rename"), done)

    def action_delete(self) -> None:
        conversation = self._selected()
        if conversation is None:
            return
        conversation_id = conversation.id
        app = self.chat_app

        async def done(yes: bool | None) -> None:
            if not yes:
                return
            if app.history_call("delete the conversation", lambda store: store.delete(conversation_id) or True):
                chat = app.chat_screen
                if chat is not None:
                    await chat.conversation_deleted(conversation_id)
            self.reload()

        title = conversation.title or "(untitled)"
        is_open = app.chat_screen is not None and app.chat_screen.conversation_id == conversation_id
        detail = plural(conversation.message_count, "message") + (", open now: it is closed" if is_open else "")
        self.app.push_screen(
            Confirm(f"Delete “{title}” ({detail})? This cannot be undone.", yes="Delete", no="Cancel"), done
        )

    def action_export(self) -> None:
        conversation_id = self.selected_id()
        if conversation_id is not None:
            self.chat_app.export_conversation(conversation_id)
