"""The medusa-chat Textual app: wiring of screens, settings, history, themes and the model loader.

First paint is instant: the model loads (and its plain decoding speed is calibrated) in a thread
worker while the chat screen is already usable. No torch import happens in this module.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from textual import on, work
from textual.app import App, SystemCommand
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.screen import Screen

from .. import settings as settings_mod
from ..default_model import NAME as DEFAULT_MODEL
from ..engine.choices import TreeError
from ..engine.config import GenerationConfig
from ..progress import progress_line
from ..settings import DEFAULT_THEME, Settings
from ..store import Store, StoreError, export_markdown
from ..trees import AUTO, resolve_tree
from .screens.chat import ChatScreen
from .session import EngineFactory, LoadedLike, LoadRequest, check_request, default_engine_factory, describe_error
from .themes import builtin_themes, user_themes

HISTORY_ERRORS: tuple[type[BaseException], ...] = (StoreError, sqlite3.Error, OSError)
T = TypeVar("T")


class LoadProgress(Message):
    def __init__(self, seq: int, text: str, measuring: bool = False) -> None:
        super().__init__()
        self.seq = seq
        self.text = text
        self.measuring = measuring


class ModelLoaded(Message):
    def __init__(self, seq: int, request: LoadRequest, loaded: LoadedLike, baseline: float | None) -> None:
        super().__init__()
        self.seq = seq
        self.request = request
        self.loaded = loaded
        self.baseline = baseline


class ModelLoadFailed(Message):
    def __init__(self, seq: int, request: LoadRequest, error: BaseException) -> None:
        super().__init__()
        self.seq = seq
        self.request = request
        self.error = error


class MedusaChatApp(App[None]):
    """Local chat with Medusa decoding."""

    TITLE = "medusa-chat"
    CSS_PATH = "app.tcss"

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+t", "toggle_medusa", "Medusa", priority=True, id="medusa.toggle",
                tooltip="Turn Medusa decoding on or off (works while typing)"),
        Binding("f1", "help", "Help", id="app.help"),
        Binding("ctrl+o", "models", "Models", id="app.models"),
        Binding("ctrl+s", "settings", "Settings", id="app.settings"),
        Binding("ctrl+l", "history", "History", id="app.history"),
        Binding("ctrl+q", "quit", "Quit", priority=True, id="app.quit",
                tooltip="Quit; an answer being generated is kept, marked stopped"),
    ]

    def __init__(
        self,
        *,
        model: str | None = None,
        quant: str | None = None,
        theme: str | None = None,
        tree: str | None = None,
        dtype: str | None = None,
        heads: str | None = None,
        threads: int | None = None,
        engine_factory: EngineFactory | None = None,
        store: Store | None = None,
        settings: Settings | None = None,
        persist_settings: bool = True,
        calibrate: bool = True,
        load_on_start: bool = True,
    ) -> None:
        super().__init__()
        self.problems: list[str] = []
        if settings is None:
            settings, self.problems = settings_mod.load()
        self.settings = settings
        self.persist_settings = persist_settings
        self.engine_factory: EngineFactory = engine_factory or default_engine_factory
        self.calibrate = calibrate
        self.load_on_start = load_on_start
        self.store = store
        self._own_store = store is None
        self.start_request = LoadRequest(
            model=model or settings.model or DEFAULT_MODEL,
            quant=quant if quant is not None else (settings.quant or None),
            tree=tree or (settings.tree if settings.tree != AUTO else None),
            dtype=dtype,
            heads=heads,
            threads=threads,
        )
        self.requested_theme = theme
        self.medusa = settings.generation.medusa
        self.colour_tokens = settings.colour_tokens
        self.loaded: LoadedLike | None = None
        self.baseline_tps: float | None = None
        self.loading = False
        self.measuring = False  # the loader is measuring the plain decoding speed
        self.pending_tree: str | None = None  # a tree chosen during a generation: used from the next answer
        self.load_error: str | None = None
        self.load_text = ""
        self._load_seq = 0
        self.chat_screen: ChatScreen | None = None
        if settings.keymap:
            self.set_keymap(settings.keymap)

    # --- lifecycle --------------------------------------------------------------------------------

    def on_mount(self) -> None:
        self._register_themes()
        self.chat_screen = ChatScreen()
        self.push_screen(self.chat_screen)
        if self.store is None:
            try:
                self.store = Store()
            except Exception as exc:
                self.problems.append(f"History is not available: {exc}")
        for problem in self.problems:
            self.notify(problem, severity="warning", timeout=8)
        self.watch(self, "theme", self._theme_changed, init=False)
        if self.load_on_start:
            self.load_model(self.start_request)

    def on_unmount(self) -> None:
        if self._own_store and self.store is not None:
            with contextlib.suppress(*HISTORY_ERRORS):
                self.store.close()

    def history_call(self, what: str, call: Callable[[Store], T]) -> T | None:
        """Run one history operation; on failure say so and keep running (None: failed or no history)."""
        if self.store is None:
            return None
        try:
            return call(self.store)
        except HISTORY_ERRORS as exc:
            self.notify(
                f"Could not {what}: {exc}. The chat goes on; history already saved is unchanged.",
                title="History", severity="error", timeout=10,
            )
            return None

    def _register_themes(self) -> None:
        names = []
        for theme in builtin_themes():
            self.register_theme(theme)
            names.append(theme.name)
        try:
            from ..paths import data_dir

            extra, problems = user_themes(data_dir() / "themes")
        except Exception as exc:  # pragma: no cover - an unusable data dir
            extra, problems = [], [str(exc)]
        for theme in extra:
            self.register_theme(theme)
        if problems:
            self.problems.append("Some user themes were skipped: " + "; ".join(problems))
        wanted = self.requested_theme or self.settings.theme or DEFAULT_THEME
        if wanted not in self.available_themes:
            self.problems.append(f"Unknown theme {wanted!r}; using {DEFAULT_THEME}.")
            wanted = DEFAULT_THEME
        self.theme = wanted

    def get_theme_variable_defaults(self) -> dict[str, str]:
        return {"token-head": "ansi_green", "token-base": "ansi_default", "gauge-good": "ansi_green"}

    def _theme_changed(self, theme: str) -> None:
        if self.settings.theme != theme:
            self.settings.theme = theme
            self.save_settings()

    def save_settings(self) -> None:
        if not self.persist_settings:
            return
        try:
            settings_mod.save(self.settings)
        except Exception as exc:
            self.notify(f"Could not save settings: {exc}", severity="error")

    def apply_settings(self, new: Settings) -> None:
        """Adopt validated settings from the form: save them and apply tree/theme/system prompt."""
        old = self.settings
        self.settings = new
        if new.theme != self.theme and new.theme in self.available_themes:
            self.theme = new.theme
        if new.tree != old.tree and self.loaded is not None:
            self.request_tree(new.tree)
        chat = self.chat_screen
        if chat is not None and new.system_prompt != old.system_prompt:
            chat.system_prompt = new.system_prompt
            cid = chat.conversation_id
            if cid is not None:
                prompt = new.system_prompt
                self.history_call("save the system prompt", lambda store: store.set_system_prompt(cid, prompt))
        self.save_settings()
        self.notify("Settings saved.")
        self.refresh_chat()

    def request_tree(self, tree: str) -> None:
        """Use ``tree`` now, or from the next answer when a generation is running (its steps read the tree)."""
        chat = self.chat_screen
        if chat is not None and chat.busy:
            self.pending_tree = tree
            self.notify(f"Tree {tree} applies from the next answer.", timeout=4)
            return
        self.pending_tree = None
        self._set_tree(tree)

    def apply_pending_tree(self) -> None:
        """Called on the UI thread just before a generation starts (no step is running then)."""
        if self.pending_tree is not None:
            tree, self.pending_tree = self.pending_tree, None
            self._set_tree(tree)

    def _set_tree(self, tree: str) -> None:
        m = self.loaded
        if m is None:
            return
        try:
            chosen = resolve_tree(
                tree, model=m.name, device=m.device, dtype=m.dtype, num_heads=m.num_heads, default=m.default_tree,
                automatic=m.auto_tree,
            )  # fmt: skip
            m.generator.set_tree(chosen.choices, name=chosen.name)
        except TreeError as exc:
            self.notify(f"Cannot use tree {tree!r}: {exc}", severity="error")
            return
        if chosen.note:
            self.notify(chosen.note, severity="warning")
        self.notify(f"Tree: {m.generator.tree_name}")
        self.refresh_chat()

    # --- status -----------------------------------------------------------------------------------

    def subtitle(self) -> str:
        name = self.loaded.name if self.loaded else (self.start_request.model if self.loading else "no model")
        return f"{name} · Medusa {'ON' if self.medusa else 'OFF'}"

    def status_line(self) -> str:
        if self.loading:
            queued = self.chat_screen is not None and self.chat_screen.queued is not None
            after = "your message is sent when the model is ready" if queued else "type now; Enter sends once loaded"
            return f"⏳ {self.load_text or 'Loading…'} · {after}"
        if self.load_error:
            return f"✗ {self.load_error} · ctrl+o to pick a model"
        if self.loaded is None:
            return "No model loaded · ctrl+o to pick a model"
        m = self.loaded
        heads = f"{m.num_heads} heads" if m.num_heads else "no heads"
        medusa = "ON" if self.medusa else "OFF"
        precision = m.dtype if m.quant in ("none", "") else f"{m.quant} ({m.dtype})"
        return (f"{m.name} · {m.engine} {m.device} {precision} · {heads} · tree {m.generator.tree_name} · "
                f"Medusa {medusa}")

    def refresh_chat(self) -> None:
        self.sub_title = self.subtitle()
        if self.chat_screen is not None and self.chat_screen.is_mounted:
            self.chat_screen.refresh_status()

    def generation_config(self, *, medusa: bool) -> GenerationConfig:
        """The settings' generation config, with the loaded model's stop strings."""
        stop = self.loaded.stop_strings if self.loaded is not None else ()
        return replace(self.settings.generation, medusa=medusa, stop_strings=tuple(stop))

    # --- model loading ----------------------------------------------------------------------------

    def load_model(self, request: LoadRequest) -> None:
        """Load ``request`` in the background (with the app's ``--threads`` unless it names its own)."""
        if request.threads is None and self.start_request.threads is not None:
            request = replace(request, threads=self.start_request.threads)
        self._load_seq += 1
        self.loading = True
        self.load_error = None
        self.load_text = f"Loading {request.model}…"
        self.refresh_chat()
        self._load(request, self._load_seq)

    @work(thread=True, group="load", exit_on_error=False)
    def _load(self, request: LoadRequest, seq: int) -> None:
        try:
            check_request(request)  # a bad --tree/--quant/--dtype/--threads is refused before any weight is read

            def progress(text: str) -> None:
                self.post_message(LoadProgress(seq, f"{request.model}: {progress_line(text)}"))

            loaded = self.engine_factory(replace(request, progress=progress))
            baseline = None
            if self.calibrate:
                self.post_message(LoadProgress(seq, f"Measuring plain decoding speed of {loaded.name}…", True))
                try:
                    baseline = float(loaded.calibrate())
                except Exception:
                    baseline = None
            self.post_message(ModelLoaded(seq, request, loaded, baseline))
        except Exception as exc:
            self.post_message(ModelLoadFailed(seq, request, exc))

    @on(LoadProgress)
    def _on_load_progress(self, message: LoadProgress) -> None:
        if message.seq == self._load_seq:
            self.load_text = message.text
            self.measuring = message.measuring
            self.refresh_chat()

    @on(ModelLoaded)
    def _on_model_loaded(self, message: ModelLoaded) -> None:
        if message.seq != self._load_seq:
            return
        previous, self.loaded = self.loaded, message.loaded
        if previous is not None and previous is not message.loaded :
            chat = self.chat_screen
            if chat is None or not chat.busy:
                with contextlib.suppress(Exception):
                    previous.unload()
        self.baseline_tps = message.baseline if message.baseline and message.baseline > 0 else None
        self.loading = self.measuring = False
        self.load_error = None
        if self.settings.tree != AUTO and message.request.tree is None:
            self.request_tree(self.settings.tree)
        if self.settings.model != message.request.model or (self.settings.quant or None) != message.request.quant:
            self.settings.model = message.request.model
            self.settings.quant = message.request.quant or ""
            self.save_settings()
        for note in self.loaded.notes:
            self.notify(note, severity="warning", timeout=8)
        if not self.loaded.generator.has_heads and self.medusa:
            self.notify("This model has no Medusa heads: decoding is plain.", severity="warning")
        self.refresh_chat()
        if self.chat_screen is not None:
            self.call_later(self.chat_screen.send_queued)

    @on(ModelLoadFailed)
    def _on_model_load_failed(self, message: ModelLoadFailed) -> None:
        if message.seq != self._load_seq:
            return
        self.loading = self.measuring = False
        self.load_error = f"Could not load {message.request.model}: {describe_error(message.error)}"
        self.notify(self.load_error, title="Model not loaded", severity="error", timeout=12)
        if self.chat_screen is not None:
            self.chat_screen.drop_queued("the model did not load")
        self.refresh_chat()

    # --- actions ----------------------------------------------------------------------------------

    def action_toggle_medusa(self) -> None:
        self.medusa = not self.medusa
        self.settings.generation.medusa = self.medusa
        self.save_settings()
        note = "" if self.loaded is None or self.loaded.generator.has_heads else " (no heads)"
        self.notify(f"Medusa {'ON' if self.medusa else 'OFF'}{note}", timeout=2)
        self.refresh_chat()

    def _on_chat(self) -> bool:
        return self.chat_screen is not None and self.screen is self.chat_screen

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return not (action in ("models", "settings", "history") and not self._on_chat())

    def action_help(self) -> None:
        from .screens.help import HelpScreen

        if isinstance(self.screen, HelpScreen):
            return
        maps = [("global", self._bindings)]
        if self.chat_screen is not None:
            maps.insert(0, ("chat", self.chat_screen._bindings))
            maps.append(("prompt", self.chat_screen.query_one("#prompt")._bindings))
        self.push_screen(HelpScreen(maps))

    def action_settings(self) -> None:
        from .screens.settings import SettingsScreen

        def done(new: Settings | None) -> None:
            if new is not None:
                self.apply_settings(new)

        self.push_screen(SettingsScreen(self.settings, sorted(self.available_themes)), done)

    def action_history(self) -> None:
        from .screens.history import HistoryScreen

        def done(conversation_id: int | None) -> None:
            if conversation_id is not None and self.chat_screen is not None:
                self.open_conversation(conversation_id)

        self.push_screen(HistoryScreen(), done)

    @work(group="open", exclusive=True)
    async def open_conversation(self, conversation_id: int) -> None:
        chat = self.chat_screen
        if chat is None:
            return
        if chat.generating:
            await chat.action_stop()
        await chat.load_conversation(conversation_id)

    def action_models(self) -> None:
        from .screens.models import ModelsScreen

        def done(request: LoadRequest | None) -> None:
            if request is not None:
                self.load_model(request)

        self.push_screen(ModelsScreen(current=self.loaded.name if self.loaded else None), done)

    def action_export(self) -> None:
        chat = self.chat_screen
        if chat is None or chat.conversation_id is None:
            self.notify("Nothing to export yet.", severity="warning")
            return
        self.export_conversation(chat.conversation_id)

    def export_conversation(self, conversation_id: int) -> None:
        from .screens.dialogs import TextPrompt

        if self.store is None:
            self.notify("History is not available.", severity="warning")
            return
        conversation = self.history_call("read the conversation", lambda store: store.get(conversation_id))
        if conversation is None:
            return
        slug = re.sub(r"[^A-Za-z0-9]+", "-", conversation.title).strip("-").lower()[:40] or "chat"
        default = Path.cwd() / f"medusa-chat-{conversation_id}-{slug}.md"

        def done(value: str | None) -> None:
            if not value:
                return
            path = Path(value).expanduser()
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(export_markdown(conversation), encoding="utf-8")
            except OSError as exc:
                self.notify(f"Export failed: {exc}", severity="error")
                return
            self.notify(f"Exported to {path}")

        self.push_screen(TextPrompt("Export conversation to Markdown file:", str(default), id="export"), done)

    def _chat_action(self, name: str):
        async def run() -> None:
            if self.chat_screen is not None:
                await self.chat_screen.run_action(name)

        return run

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield SystemCommand(
            f"Medusa: turn {'off' if self.medusa else 'on'}",
            "Toggle Medusa decoding (ctrl+t); speedup is measured against plain decoding",
            self.action_toggle_medusa,
        )
        chat_commands = [
            ("Stop generation", "Stop the answer being generated (Esc); the partial answer is kept", "stop"),
            ("New chat", "Start a new conversation (ctrl+n)", "new_chat"),
            ("Regenerate", "Generate the last answer again (ctrl+r)", "regenerate"),
            ("Compare Medusa off/on", "Re-run the last prompt with Medusa off and on, side by side (ctrl+b)",
             "compare"),
            ("Colour tokens", "Colour text by origin: Medusa head vs base model (ctrl+g)", "colour"),
            ("Copy last answer", "Copy the last answer to the clipboard (F6)", "copy_answer"),
            ("Copy code block", "Copy the last code block to the clipboard (F7)", "copy_code"),
            ("Export conversation", "Write the conversation to a Markdown file (F8)", "export"),
        ]
        for title, help_text, action in chat_commands:
            yield SystemCommand(title, help_text, self._chat_action(action))
        yield SystemCommand("Models", "Pick, download and load a model (ctrl+o)", self.action_models)
        yield SystemCommand("Settings", "Temperature, top-p, tree, thresholds, system prompt, theme (ctrl+s)",
                            self.action_settings)
        yield SystemCommand("History", "Reopen, rename, delete or export past conversations (ctrl+l)",
                            self.action_history)
        yield SystemCommand("Help", "Keys and what the gauges mean (F1)", self.action_help)
        yield from super().get_system_commands(screen)


def run_app(**options: Any) -> None:
    """Run the TUI (the CLI's default command); ``options`` are :class:`MedusaChatApp`'s (model, quant, ...)."""
    app = MedusaChatApp(**options)
    app.run()
