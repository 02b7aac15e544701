"""Settings form: generation parameters, tree, typical-acceptance thresholds, system prompt, theme.

Values are validated by ``medusa_chat.settings``; invalid ones are shown next to their field and
nothing is saved until all are valid.
"""

from __future__ import annotations

from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Footer, Input, Label, Select, Static, Switch, TextArea

from ...engine.config import ACCEPTANCE_MODES, FIELDS
from ...settings import Settings, SettingsError, parse_form, tree_choices

NUMBER_FIELDS: list[tuple[str, str, str]] = [
    ("temperature", "Temperature", ""),
    ("top_p", "Top-p", ""),
    ("max_new_tokens", "Max new tokens", ""),
    ("posterior_threshold", "Typical: threshold ε", "sampling only"),
    ("posterior_alpha", "Typical: alpha δ", "sampling only"),
    ("prompt_lookup", "Prompt lookup", "tokens"),
]
"""(field, label, note): the hint is the note and the field's range, read from ``GenerationConfig``."""
ACCEPTANCE_LABELS = {"typical": "typical (fast, approximate)", "exact": "exact (lossless sampling)"}


def hint(name: str, note: str) -> str:
    """A number field's hint: its note, then its range."""
    text = FIELDS[name].metadata["bounds"].text
    return f"{note}; {text}" if note else text


class SettingsScreen(ModalScreen[Settings | None]):
    """Dismisses with the new (validated) Settings for the app to apply, or None when cancelled.

    Opens on the first field.
    """

    AUTO_FOCUS = "#field-temperature"

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel", id="settings.cancel"),
        Binding("ctrl+s", "save", "Save", priority=True, id="settings.save"),
    ]

    def __init__(self, settings: Settings, themes: list[str]) -> None:
        super().__init__(id="settings")
        self.settings = settings
        self.themes = themes
        self.errors: dict[str, str] = {}
        self.checked: dict[str, object] = {}  # the values the errors were found in

    def compose(self) -> ComposeResult:
        s = self.settings
        with Vertical(id="settings-dialog"):
            yield Static("Settings", id="settings-title")
            with VerticalScroll(id="settings-form"):
                for name, label, note in NUMBER_FIELDS:
                    with Horizontal(classes="field"):
                        yield Label(label, classes="field-label")
                        yield Input(str(getattr(s.generation, name)), id=f"field-{name}", classes="field-input")
                        yield Static(hint(name, note), classes="field-hint")
                    yield Static("", id=f"error-{name}", classes="field-error")
                trees = tree_choices()
                if s.tree not in trees:
                    trees.append(s.tree)
                with Horizontal(classes="field"):
                    yield Label("Tree", classes="field-label")
                    yield Select([(t, t) for t in trees], value=s.tree, allow_blank=False, id="field-tree")
                    yield Static("auto: the model's default; tuned: this machine's", classes="field-hint")
                yield Static("", id="error-tree", classes="field-error")
                with Horizontal(classes="field"):
                    yield Label("Sampling acceptance", classes="field-label")
                    choices = [(ACCEPTANCE_LABELS.get(mode, mode), mode) for mode in ACCEPTANCE_MODES]
                    yield Select(choices, value=s.generation.acceptance, allow_blank=False, id="field-acceptance")
                    yield Static("with temperature > 0", classes="field-hint")
                yield Static("", id="error-acceptance", classes="field-error")
                with Horizontal(classes="field"):
                    yield Label("Automatic fallback", classes="field-label")
                    yield Switch(s.generation.auto_fallback, id="field-auto_fallback")
                    yield Static("decode plainly while Medusa is measured slower", classes="field-hint")
                yield Static("", id="error-auto_fallback", classes="field-error")
                themes = list(self.themes)
                if s.theme not in themes:
                    themes.append(s.theme)
                with Horizontal(classes="field"):
                    yield Label("Theme", classes="field-label")
                    yield Select([(t, t) for t in themes], value=s.theme, allow_blank=False, id="field-theme")
                yield Static("", id="error-theme", classes="field-error")
                yield Label("System prompt (applies to this and new chats)", classes="field-label -wide")
                yield TextArea(s.system_prompt, id="field-system_prompt", soft_wrap=True, show_line_numbers=False)
                yield Static("", id="error-system_prompt", classes="field-error")
            yield Static("", id="settings-message")
            with Horizontal(id="settings-buttons"):
                yield Button("Save", id="save", variant="primary")
                yield Button("Cancel", id="cancel")
        yield Footer()

    def on_mount(self) -> None:
        # Focus before the first paint, so keys typed as soon as the form shows land in its first field.
        self.query_one("#field-temperature", Input).focus()

    def form_values(self) -> dict[str, object]:
        values: dict[str, object] = {
            name: self.query_one(f"#field-{name}", Input).value for name, _, _ in NUMBER_FIELDS
        }
        values["tree"] = self.query_one("#field-tree", Select).value
        values["acceptance"] = self.query_one("#field-acceptance", Select).value
        values["auto_fallback"] = self.query_one("#field-auto_fallback", Switch).value
        values["theme"] = self.query_one("#field-theme", Select).value
        values["system_prompt"] = self.query_one("#field-system_prompt", TextArea).text
        return values

    def action_save(self) -> None:
        for error in self.query(".field-error"):
            error.update("")  # type: ignore[attr-defined]
        self.errors = {}
        try:
            new = parse_form(self.settings, self.form_values())
        except SettingsError as exc:
            self.errors = dict(exc.errors)
            self.checked = self.form_values()
            for name, text in exc.errors.items():
                self.query_one(f"#error-{name}", Static).update(f"✗ {text}")
                for widget in self.query(f"#field-{name}"):
                    widget.add_class("-invalid")
            self._show_message()
            return
        self.dismiss(new)

    def _show_message(self) -> None:
        n = len(self.errors)
        text = f"Not saved: {n} invalid value{'s' if n != 1 else ''}." if n else ""
        self.query_one("#settings-message", Static).update(text)

    @on(Input.Changed)
    @on(Select.Changed)
    @on(Switch.Changed)
    @on(TextArea.Changed)
    def _clear_invalid(self, event: Input.Changed | Select.Changed | Switch.Changed | TextArea.Changed) -> None:
        """An edited field is no longer known to be invalid: its error and the stale count go."""
        widget = event.control
        name = (widget.id or "").removeprefix("field-")
        if name not in self.errors or self.form_values().get(name) == self.checked.get(name):
            return  # a change event for the value that was checked (it may arrive after the check)
        widget.remove_class("-invalid")
        if name in self.errors:
            del self.errors[name]
            self.query_one(f"#error-{name}", Static).update("")
            self._show_message()

    @on(Button.Pressed, "#save")
    def _save(self) -> None:
        self.action_save()

    @on(Button.Pressed, "#cancel")
    def _cancel(self) -> None:
        self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)
