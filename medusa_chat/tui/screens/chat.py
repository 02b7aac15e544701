"""The chat screen: transcript, gauges, prompt; generation and compare runs in thread workers."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Header, Static

from ...engine.config import GenerationConfig
from ...engine.events import GenerationStats, StepEvent
from ...errors import UserError
from ...settings import record
from ...store import StoredMessage
from ..session import token_segments
from ..stats import Gauges
from ..widgets.footer import ChatFooter
from ..widgets.gauges import GaugeBar
from ..widgets.message import COLOUR_LEGEND, MessageView, code_blocks
from ..widgets.prompt import PromptInput

if TYPE_CHECKING:
    from ..app import MedusaChatApp

BASELINE_MIN_TOKENS = 8  # a plain run refreshes the measured plain speed when it is at least this long


@dataclass
class Job:
    """One generation in flight."""

    id: int
    view: MessageView | None
    gauges: Gauges
    cancel: threading.Event = field(default_factory=threading.Event)
    stopped: bool = False
    done: bool = False
    queue: deque[tuple[StepEvent | GenerationStats, list[tuple[str, bool]]]] = field(default_factory=deque)
    wake_pending: bool = False
    drawn_at: float = 0.0  # when the answer was last drawn (time.monotonic)
    ui_cpu_at: float = 0.0  # the UI thread's CPU time then (time.thread_time)


@dataclass
class CompareResult:
    prompt: str
    plain: GenerationStats
    medusa: GenerationStats
    baseline_tps: float | None

    @property
    def identical(self) -> bool:
        return list(self.plain.token_ids) == list(self.medusa.token_ids) and self.plain.text == self.medusa.text

    @property
    def speedup(self) -> float | None:
        plain = self.plain.tokens_per_s
        return self.medusa.tokens_per_s / plain if plain > 0 else None


class Drain(Message):
    """Wake-up for the UI: items are waiting in the job's queue."""

    def __init__(self, job_id: int) -> None:
        super().__init__()
        self.job_id = job_id


class Failed(Message):
    def __init__(self, job_id: int, error: BaseException) -> None:
        super().__init__()
        self.job_id = job_id
        self.error = error


class CompareProgress(Message):
    def __init__(self, job_id: int, text: str) -> None:
        super().__init__()
        self.job_id = job_id
        self.text = text


class CompareDone(Message):
    def __init__(self, job_id: int, result: CompareResult | None, error: BaseException | None = None) -> None:
        super().__init__()
        self.job_id = job_id
        self.result = result
        self.error = error


class ChatScreen(Screen):
    """Transcript + gauges + prompt. All engine work happens in thread workers (group ``generate``)."""

    AUTO_FOCUS = "#prompt"
    DRAW_INTERVAL = 0.1  # seconds between redraws of a streaming answer, at least ...
    DRAW_SHARE = 0.2  # ... and long enough that drawing (its layout grows with the transcript) takes at most
    # this share of a core: every cycle drawing takes is one decoding does not get

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "stop", "Stop", priority=True, id="generation.stop", tooltip="Stop the generation"),
        Binding("ctrl+n", "new_chat", "New chat", priority=True, id="chat.new"),
        Binding("ctrl+r", "regenerate", "Regenerate", priority=True, id="chat.regenerate",
                tooltip="Generate the last answer again (replaces it)"),
        Binding("ctrl+b", "compare", "Compare", priority=True, id="chat.compare",
                tooltip="Re-run the last prompt with Medusa off and on, side by side"),
        Binding("ctrl+g", "colour", "Colour tokens", priority=True, id="chat.colour", show=False,
                tooltip="Colour streamed text: accepted from a Medusa head vs the base model's own token"),
        Binding("f6", "copy_answer", "Copy answer", priority=True, id="chat.copy_answer", show=False),
        Binding("f7", "copy_code", "Copy code", priority=True, id="chat.copy_code", show=False),
        Binding("f8", "export", "Export", priority=True, id="chat.export", show=False),
    ]

    def __init__(self) -> None:
        super().__init__(id="chat")
        self.turns: list[dict[str, str]] = []
        self.conversation_id: int | None = None
        self.system_prompt = ""
        self.job: Job | None = None
        self._job_seq = 0
        self._pending: tuple[str, Any] | None = None  # a request waiting for the stopped worker to end
        self.last_gauges: Gauges | None = None
        self.compare_running = False
        self.queued: str | None = None  # a prompt sent while the model loads; sent once loading ends

    @property
    def chat_app(self) -> MedusaChatApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False, icon="◉")
        yield Static("", id="status")
        with VerticalScroll(id="transcript"):
            yield Static(
                "Type a message and press Enter. Shift+Enter or Ctrl+J adds a newline; Up/Down recall earlier "
                "prompts.\nctrl+t toggles Medusa · Esc stops · ctrl+b compares Medusa off/on · F1 help · "
                "ctrl+p commands",
                id="welcome",
            )
        yield GaugeBar(id="gauges")
        yield PromptInput(id="prompt", placeholder="Message (Enter to send)")
        yield ChatFooter()

    def on_mount(self) -> None:
        self.query_one("#transcript", VerticalScroll).anchor()
        self.system_prompt = self.chat_app.settings.system_prompt
        self.refresh_status()

    def on_unmount(self) -> None:
        # Quitting (or tearing the screen down) stops any generation and keeps what it produced.
        self.save_partial()

    def save_partial(self) -> None:
        """Stop a running answer and store what was generated so far, marked stopped (quit mid-answer)."""
        job = self.job
        if job is None:
            return
        job.cancel.set()
        if job.stopped or job.done or job.view is None or self.compare_running:
            return
        job.stopped = True
        while job.queue:  # text the UI has not drawn yet still belongs to the answer
            item, _ = job.queue.popleft()
            if isinstance(item, StepEvent):
                job.gauges.add(item)
                job.view.content += item.text
        if job.view.content:
            self._finish_answer(job, stopped=True)

    # --- status -----------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return (self.job is not None and not self.job.done) or self.compare_running

    @property
    def generating(self) -> bool:
        return self.job is not None and not self.job.stopped and not self.job.done

    def refresh_status(self) -> None:
        app = self.chat_app
        self.sub_title = app.subtitle()
        self.query_one("#status", Static).update(app.status_line())
        self.query_one("#status").set_class(app.loading, "-loading")
        self.query_one("#status").set_class(app.load_error is not None, "-error")
        running = self.job is not None and not self.job.done and self.job.view is not None
        gauges = self.job.gauges if running and self.job is not None else self.last_gauges
        self.query_one(GaugeBar).show(gauges, app.medusa, app.baseline_tps, measuring=app.measuring)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "stop":
            return self.generating or self.compare_running
        if action == "regenerate":
            return not self.busy  # hidden while generating (the footer keeps room for Stop)
        return True

    # --- prompt -----------------------------------------------------------------------------------

    @on(PromptInput.Submitted)
    async def on_prompt_submitted(self, event: PromptInput.Submitted) -> None:
        await self.submit(event.text)

    async def submit(self, text: str) -> bool:
        """Send ``text`` as the next user turn; False when it cannot be sent now (queued while loading)."""
        app = self.chat_app
        if app.loaded is None:
            if app.loading:
                first = self.queued is None
                self.queued = text
                if first:
                    app.notify("The model is loading: your message is sent when it is ready.", timeout=4)
                self.refresh_status()
            else:
                app.notify("No model loaded (ctrl+o).", severity="warning")
            return False
        if self.busy and not (self.job is not None and self.job.stopped):
            app.notify("Still generating: press Esc to stop it first.", severity="warning")
            return False
        prompt = self.query_one(PromptInput)
        prompt.remember(text)
        if prompt.text == text or self.queued is None:
            prompt.load_text("")
        self.queued = None
        await self._add_view(MessageView("user", text))
        self.turns.append({"role": "user", "content": text})
        self._store_message(StoredMessage("user", text))
        self._start_generation()
        return True

    async def send_queued(self) -> None:
        """The model is ready: send the prompt queued while it loaded (once)."""
        text = self.queued
        if text is not None:
            await self.submit(text)
            self.queued = None

    def drop_queued(self, reason: str) -> None:
        if self.queued is not None:
            self.queued = None
            self.chat_app.notify(f"Your message was not sent: {reason}. It is still in the prompt.",
                                 severity="warning")

    async def _add_view(self, view: MessageView) -> None:
        transcript = self.query_one("#transcript", VerticalScroll)
        for welcome in self.query("#welcome"):
            await welcome.remove()
        await transcript.mount(view)
        transcript.anchor()

    def _messages(self) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt.strip() else []
        return system + [dict(t) for t in self.turns]

    # --- generation -------------------------------------------------------------------------------

    def _start_generation(self) -> None:
        if self.job is not None and not self.job.done:
            # The previous (stopped) worker is still finishing its last step: start when it ends.
            self._pending = ("generate", None)
            return
        app = self.chat_app
        app.apply_pending_tree()  # never while a step runs: the worker starts after this
        self._job_seq += 1
        view = MessageView("assistant", model=app.loaded.name if app.loaded else "", colour=app.colour_tokens)
        job = Job(self._job_seq, view, Gauges(medusa=app.medusa, baseline_tps=app.baseline_tps))
        self.job = job
        self.call_next(self._begin_stream, job)

    async def _begin_stream(self, job: Job) -> None:
        assert job.view is not None
        await self._add_view(job.view)
        job.view.start_stream()
        self.refresh_status()
        self._generate(job, self._messages(), self.chat_app.generation_config(medusa=job.gauges.medusa))

    @work(thread=True, exclusive=False, group="generate", exit_on_error=False)
    def _generate(self, job: Job, messages: list[dict[str, str]], config: GenerationConfig) -> None:
        """Worker thread: runs the engine and hands its events to the UI through ``job.queue``.

        Coalescing: one ``Drain`` message is in flight at a time; the UI drains everything queued
        so far, so a fast engine never floods the UI and a slow UI never lags behind by more than one drain.
        """
        loaded = self.chat_app.loaded
        try:
            assert loaded is not None
            ids = loaded.chat_ids(messages)
            for item in loaded.generator.stream(ids, config, job.cancel):
                segments = token_segments(loaded.tokenizer, item) if isinstance(item, StepEvent) else []
                job.queue.append((item, segments))
                if not job.wake_pending:
                    job.wake_pending = True
                    self.post_message(Drain(job.id))
        except Exception as exc:
            self.post_message(Failed(job.id, exc))

    @on(Drain)
    async def on_drain(self, message: Drain) -> None:
        job = self.job
        if job is None or job.id != message.job_id:
            return
        drawing = time.thread_time() - job.ui_cpu_at  # what the UI thread spent since the last draw: drawing it
        wait = job.drawn_at + max(self.DRAW_INTERVAL, drawing / self.DRAW_SHARE) - time.monotonic()
        if wait > 0:  # drawn moments ago: draw what arrives meanwhile in one go, a little later
            self.set_timer(wait, lambda: self._drain(job))
        else:
            await self._drain(job)

    async def _drain(self, job: Job) -> None:
        job.wake_pending = False
        job.drawn_at, job.ui_cpu_at = time.monotonic(), time.thread_time()
        events: list[StepEvent] = []
        segments: list[tuple[str, bool]] = []
        final: GenerationStats | None = None
        while job.queue:
            item, item_segments = job.queue.popleft()
            if isinstance(item, StepEvent):
                events.append(item)
                segments.extend(item_segments)
            else:
                final = item
        if events and not job.stopped and job.view is not None:
            for event in events:
                job.gauges.add(event)
            await job.view.append("".join(e.text for e in events), segments)
            self.query_one(GaugeBar).show(job.gauges, self.chat_app.medusa, job.gauges.baseline_tps)
        if final is not None:
            await self._finished(job, final)

    async def _finished(self, job: Job, stats: GenerationStats) -> None:
        job.done = True
        if job.stopped:
            await self._after_job()
            return
        job.gauges.finish(stats)
        app = self.chat_app
        if not stats.medusa and stats.new_tokens >= BASELINE_MIN_TOKENS and stats.tokens_per_s > 0:
            app.baseline_tps = stats.tokens_per_s  # measured plain speed, refreshed
            job.gauges.baseline_tps = stats.tokens_per_s
        elif job.gauges.plain_tps:
            app.baseline_tps = job.gauges.plain_tps  # plain steps timed in this answer: the latest plain speed
        assert job.view is not None
        if stats.text and not job.view.content:
            await job.view.append(stats.text, [(stats.text, False)])
        self._finish_answer(job, stopped=stats.stop_reason == "cancelled")
        await job.view.finish(stopped=job.view.stopped, stats=job.gauges.as_dict())
        if stats.stop_reason == "context":
            app.notify("The answer reached the model's context length.", severity="warning")
        await self._after_job()

    @on(Failed)
    async def on_failed(self, message: Failed) -> None:
        job = self.job
        if job is None or job.id != message.job_id:
            return
        await self._drain(job)
        job.done = True
        error = message.error
        # A user error (the conversation outgrew the context...) says what to do; anything else is a bug.
        text = str(error) if isinstance(error, UserError) else f"Generation failed: {type(error).__name__}: {error}"
        self.chat_app.notify(text, title="Generation error", severity="error", timeout=10)
        if not job.stopped and job.view is not None:
            if job.view.content:
                self._finish_answer(job, stopped=True)
                await job.view.finish(stopped=True, stats=job.gauges.as_dict())
            else:
                await job.view.remove()
                # Keep the prompt for another try: drop the unanswered user turn.
                if self.turns and self.turns[-1]["role"] == "user":
                    self.query_one(PromptInput).load_text(self.turns[-1]["content"])
        await self._after_job()

    def _finish_answer(self, job: Job, *, stopped: bool) -> None:
        """Record the answer in the turns and the store (once)."""
        assert job.view is not None
        job.view.stopped = stopped
        self.turns.append({"role": "assistant", "content": job.view.content})
        self.last_gauges = job.gauges
        stored = StoredMessage(
            "assistant",
            job.view.content,
            model=job.view.model,
            settings=record(self.chat_app.generation_config(medusa=job.gauges.medusa)),
            stats=job.gauges.as_dict(),
            stopped=stopped,
        )
        self._store_message(stored)
        job.view.stored_id = stored.id

    async def _after_job(self) -> None:
        self.refresh_status()
        pending, self._pending = self._pending, None
        if pending is not None:
            kind, arg = pending
            if kind == "generate":
                self._start_generation()
            elif kind == "compare":
                self._run_compare(arg)

    async def action_stop(self) -> None:
        """Esc: stop at once; the partial answer is kept, marked stopped, and stored."""
        if self.compare_running:
            if self.job is not None:
                self.job.cancel.set()
            return
        job = self.job
        if job is None or job.stopped or job.done:
            return
        job.cancel.set()
        job.stopped = True
        self._finish_answer(job, stopped=True)
        assert job.view is not None
        await job.view.finish(stopped=True, stats=job.gauges.as_dict())
        self.refresh_status()
        self.query_one(PromptInput).focus()

    # --- storage ----------------------------------------------------------------------------------

    def _store_message(self, message: StoredMessage) -> None:
        """Save a message (creating the conversation first); a failing history is reported, never fatal."""
        app = self.chat_app
        if self.conversation_id is None:
            model = app.loaded.name if app.loaded else ""
            self.conversation_id = app.history_call(
                "save this chat", lambda store: store.create_conversation(system_prompt=self.system_prompt, model=model)
            )
            if self.conversation_id is None:
                return
        app.history_call("save the message", lambda store: store.add_message(self.conversation_id, message))

    async def conversation_deleted(self, conversation_id: int) -> None:
        """The open conversation was deleted from history: clear it from the screen and start a new chat."""
        if self.conversation_id != conversation_id:
            return
        job = self.job
        if job is not None and not job.done:
            job.cancel.set()
            job.stopped = True  # nothing of a deleted chat is saved again
        self.conversation_id = None
        await self.load_conversation(None)
        self.chat_app.notify("The open conversation was deleted: this is a new chat.")

    # --- actions ----------------------------------------------------------------------------------

    async def action_new_chat(self) -> None:
        if self.generating:
            await self.action_stop()
        await self.load_conversation(None)
        self.chat_app.notify("New chat")

    async def load_conversation(self, conversation_id: int | None) -> None:
        """Show a stored conversation (None: an empty new chat)."""
        transcript = self.query_one("#transcript", VerticalScroll)
        await transcript.remove_children()
        self.turns = []
        self.conversation_id = None
        self.last_gauges = None
        self.system_prompt = self.chat_app.settings.system_prompt
        if conversation_id is not None:
            conversation = self.chat_app.history_call("open the conversation", lambda store: store.get(conversation_id))
            if conversation is not None:
                self.conversation_id = conversation.id
                self.system_prompt = conversation.system_prompt
                views = []
                for m in conversation.messages:
                    if m.role == "system":
                        continue
                    self.turns.append({"role": m.role, "content": m.content})
                    views.append(
                        MessageView(
                            m.role,
                            m.content,
                            model=m.model,
                            stats=m.stats,
                            stopped=m.stopped,
                            colour=self.chat_app.colour_tokens,
                            stored_id=m.id,
                        )
                    )
                    if m.role == "assistant" and m.stats:
                        self.last_gauges = Gauges.from_dict(m.stats)
                await transcript.mount_all(views)
                transcript.anchor()
        self.refresh_status()

    async def action_regenerate(self) -> None:
        if self.busy:
            self.chat_app.notify("Still generating: press Esc first.", severity="warning")
            return
        if self.chat_app.loaded is None:
            self.chat_app.notify("No model loaded.", severity="warning")
            return
        views = list(self.query(MessageView))
        if not views or views[-1].role != "assistant":
            self.chat_app.notify("Nothing to regenerate yet.", severity="warning")
            return
        last = views[-1]
        cid = self.conversation_id
        if cid is not None and last.stored_id is not None:
            # Only the answer this window made: another window's later turns are never touched.
            deleted = self.chat_app.history_call(
                "replace the answer in history", lambda store: store.delete_messages(cid, [last.stored_id])
            )
            if deleted is None:
                return
        await last.remove()
        if self.turns and self.turns[-1]["role"] == "assistant":
            self.turns.pop()
        self._start_generation()

    def last_answer(self) -> MessageView | None:
        answers = [v for v in self.query(MessageView) if v.role == "assistant" and v.content]
        return answers[-1] if answers else None

    def action_copy_answer(self) -> None:
        view = self.last_answer()
        if view is None:
            self.chat_app.notify("No answer to copy yet.", severity="warning")
            return
        self.chat_app.copy_to_clipboard(view.content)
        self.chat_app.notify("Copied the last answer to the clipboard (OSC 52).")

    def action_copy_code(self) -> None:
        for view in reversed([v for v in self.query(MessageView) if v.role == "assistant"]):
            blocks = code_blocks(view.content)
            if blocks:
                self.chat_app.copy_to_clipboard(blocks[-1])
                lines = blocks[-1].count("\n") + 1
                self.chat_app.notify(f"Copied a code block ({lines} lines) to the clipboard.")
                return
        self.chat_app.notify("No code block in the answers.", severity="warning")

    def action_export(self) -> None:
        self.chat_app.action_export()

    def action_colour(self) -> None:
        app = self.chat_app
        app.colour_tokens = not app.colour_tokens
        for view in self.query(MessageView):
            view.set_colour(app.colour_tokens)
        app.notify(COLOUR_LEGEND if app.colour_tokens else "Token colouring off: Markdown again")

    # --- compare mode -----------------------------------------------------------------------------

    def action_compare(self) -> None:
        app = self.chat_app
        if app.loaded is None:
            app.notify("No model loaded.", severity="warning")
            return
        if self.busy:
            app.notify("Still generating: press Esc first.", severity="warning")
            return
        if not any(t["role"] == "user" for t in self.turns):
            app.notify("Send a prompt first: compare re-runs the last prompt.", severity="warning")
            return
        last_user = max(i for i, t in enumerate(self.turns) if t["role"] == "user")
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt.strip() else []
        messages = system + [dict(t) for t in self.turns[: last_user + 1]]
        self._run_compare(messages)

    def _run_compare(self, messages: list[dict[str, str]]) -> None:
        app = self.chat_app
        app.apply_pending_tree()
        self._job_seq += 1
        self.job = Job(self._job_seq, None, Gauges(medusa=True, baseline_tps=app.baseline_tps))
        self.compare_running = True
        self.query_one("#status", Static).update("Comparing: plain decoding (Medusa off)… Esc cancels")
        self._compare(self.job, messages, app.generation_config(medusa=False))

    @work(thread=True, group="generate", exit_on_error=False)
    def _compare(self, job: Job, messages: list[dict[str, str]], config: GenerationConfig) -> None:
        loaded = self.chat_app.loaded
        try:
            assert loaded is not None
            ids = loaded.chat_ids(messages)
            plain = loaded.generator.generate(ids, config, job.cancel)
            self.post_message(CompareProgress(job.id, "Comparing: Medusa decoding (Medusa on)… Esc cancels"))
            # Compare measures Medusa itself: no automatic fallback in its Medusa run.
            medusa_config = replace(config, medusa=True, auto_fallback=False)
            medusa = loaded.generator.generate(ids, medusa_config, job.cancel)
            if job.cancel.is_set():
                self.post_message(CompareDone(job.id, None))
                return
            prompt = messages[-1]["content"]
            self.post_message(CompareDone(job.id, CompareResult(prompt, plain, medusa, None)))
        except Exception as exc:
            self.post_message(CompareDone(job.id, None, exc))

    @on(CompareProgress)
    def on_compare_progress(self, message: CompareProgress) -> None:
        if self.job is not None and self.job.id == message.job_id:
            self.query_one("#status", Static).update(message.text)

    @on(CompareDone)
    async def on_compare_done(self, message: CompareDone) -> None:
        if self.job is None or self.job.id != message.job_id:
            return
        self.job.done = True
        self.compare_running = False
        app = self.chat_app
        if message.error is not None:
            app.notify(f"Compare failed: {message.error}", severity="error")
        elif message.result is None:
            app.notify("Compare cancelled.")
        else:
            result = message.result
            if result.plain.new_tokens >= BASELINE_MIN_TOKENS and result.plain.tokens_per_s > 0:
                app.baseline_tps = result.plain.tokens_per_s
            result.baseline_tps = app.baseline_tps
            from .compare import CompareScreen

            app.push_screen(CompareScreen(result))
        await self._after_job()
