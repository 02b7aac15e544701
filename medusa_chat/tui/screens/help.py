"""F1 help: every binding (with its id, for remapping) and what the gauges mean."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingsMap, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Markdown, Static

from ..widgets.gauges import ACCEPT_HELP, FALLBACK_HELP, SPEEDUP_HELP

HELP_MARKDOWN = f"""\
## Gauges

- **accepted/step** — {ACCEPT_HELP}
- **tok/s** — decoding speed of the answer (prefill excluded).
- **speedup** — {SPEEDUP_HELP}
- **→ plain** — {FALLBACK_HELP}
- Each finished answer keeps its own figures in the line under it; every figure there and in the bar comes from
  the same counters of that answer.

## Medusa

Medusa adds small *decoding heads* that guess several tokens ahead; one forward pass verifies the
guesses along a tree of candidates. Under greedy decoding (temperature 0) the output is **identical**
to plain decoding: **compare** (ctrl+b) re-runs the last prompt both ways and checks it.
**Colour tokens** (ctrl+g) shows the answers as plain text with the tokens drafted by a head highlighted.

## Prompt

Enter sends · Shift+Enter or Ctrl+J inserts a newline · Up/Down on the first/last line recall earlier prompts.
While the model loads, Enter queues the message: it is sent once, when loading ends.

## Quitting

**ctrl+q** quits. An answer being generated is kept, marked *stopped*, like Esc.
ctrl+p opens the command palette (every action, including those not in the footer).

## Remapping keys

Every binding has an id. Put a `[keymap]` table in the config file, e.g. `"chat.compare" = "f5"`.
"""


def binding_rows(maps: list[tuple[str, BindingsMap]]) -> list[tuple[str, str, str, str]]:
    """(where, key, action description, id) for each binding with an id, in order."""
    rows: list[tuple[str, str, str, str]] = []
    seen: set[str] = set()
    for where, bindings in maps:
        by_id: dict[str, tuple[Binding, list[str]]] = {}
        for key, items in bindings.key_to_bindings.items():
            for binding in items:
                if binding.id is None:
                    continue
                entry = by_id.setdefault(binding.id, (binding, []))
                entry[1].append(key)
        for binding_id, (binding, keys) in by_id.items():
            if binding_id in seen:
                continue
            seen.add(binding_id)
            description = binding.description or binding.action
            if binding.tooltip:
                description += f" — {binding.tooltip}"
            rows.append((where, ", ".join(keys), description, binding_id))
    return rows


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,f1,q", "dismiss", "Close help", id="help.close"),
        Binding("pagedown,space", "page(1)", "More", priority=True, id="help.page_down"),
        Binding("pageup", "page(-1)", "Back", priority=True, id="help.page_up"),
    ]

    def __init__(self, maps: list[tuple[str, BindingsMap]]) -> None:
        super().__init__(id="help")
        self.maps = maps

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-dialog"):
            yield Static("medusa-chat · keys and gauges", id="help-title")
            table: DataTable = DataTable(id="help-bindings", cursor_type="row", zebra_stripes=True)
            table.add_columns("where", "key", "action", "id")
            for row in binding_rows(self.maps):
                table.add_row(*row)
            yield table
            yield Markdown(HELP_MARKDOWN, id="help-text")
        yield Footer()

    def action_page(self, pages: int) -> None:
        """Scroll the whole help (the keys table keeps the arrows), so the text below the table is reachable."""
        dialog = self.query_one("#help-dialog", VerticalScroll)
        if pages > 0:
            dialog.scroll_page_down()
        else:
            dialog.scroll_page_up()
