"""Model picker: the catalogue with cache state, size, memory estimates; download with progress; load.

4-bit and 8-bit are offered where the loader can run them (:func:`medusa_chat.loading.quant_problem`): on a
CPU through the lean decoder (the Llama family), on a GPU through bitsandbytes; elsewhere ``n/a`` with the reason.

Any Hub repo id or local model directory can be typed too (validated before loading). The catalogue scan
and every download run in thread workers; the screen never blocks. On narrow terminals the table uses
compact cells so the memory columns and the buttons stay visible.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Footer, Input, ProgressBar, Select, Static

from ...memory import bytes_needed
from ...units import human_bytes, human_duration
from ..session import LoadRequest, describe_error

if TYPE_CHECKING:
    from ..app import MedusaChatApp

PRECISIONS: list[tuple[str, str, float]] = [
    # (label, value, bytes per parameter); 4/8-bit: the lean decoder on a CPU, bitsandbytes on a GPU;
    # 16-bit: bf16 on a CPU (fp16 is very slow there), fp16 on a GPU
    ("auto", "auto", 0.0),
    ("4-bit", "4bit", 0.5),
    ("8-bit", "8bit", 1.0),
    ("16-bit", "16bit", 2.0),
    ("fp32", "fp32", 4.0),
]


def machine_memory() -> int:
    """Memory available to run a model here, in bytes: the GPU's when there is one, else RAM (0 if unknown).

    Called from the catalogue worker thread (``memory.detect_device`` imports torch).
    """
    try:
        from ...memory import detect_device

        return int(detect_device().available_bytes)
    except Exception:
        try:
            return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        except (ValueError, OSError, AttributeError):
            return 0


def machine_has_cuda() -> bool:
    """Whether torch sees a CUDA GPU (the loader runs on it). Called from the catalogue worker thread."""
    try:
        from ...memory import detect_device

        return detect_device().kind == "cuda"
    except Exception:
        return False


QUANTISED = ("4bit", "8bit")


def precision_problems(architecture: str, cuda: bool) -> dict[str, str]:
    """Why 4-bit / 8-bit cannot run a model of ``architecture`` here, by precision (absent: it can).

    The loader's own rule; called from the catalogue worker thread (it may import torch).
    """
    from ...loading import quant_problem

    device = "cuda" if cuda else "cpu"
    return {q: reason for q in QUANTISED if (reason := quant_problem(q, device, architecture))}


SHORT_STATES = {"not downloaded": "remote", "not installed": "missing", "downloading": "↓ now", "packaged": "bundled"}
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
NARROW = 90  # below this width: compact cells and labels


def parse_model_id(text: str) -> tuple[str | None, str]:
    """(model, problem) for a typed model: an existing local directory or a Hub repo id ``org/name``."""
    text = text.strip()
    if not text:
        return None, "Type a Hub repo id (org/name) or a local model directory."
    path = os.path.expanduser(text)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            return None, f"{text} is a directory without config.json: not a Hugging Face model directory."
        return os.path.abspath(path), ""
    if text.startswith(("/", ".", "~")) or os.sep in text.rstrip("/").replace("/", "", 1):
        return None, f"No such directory: {text}"
    if REPO_ID.match(text) and ".." not in text:
        return text, ""
    return None, f"{text!r} is neither a local directory nor a Hub repo id like org/name."


def unavailable(problems: dict[str, str]) -> list[str]:
    """One line per reason a precision cannot run here: ``4-bit, 8-bit: n/a, <reason>``."""
    by_reason: dict[str, list[str]] = {}
    for label, value, _ in PRECISIONS:
        if value in problems:
            by_reason.setdefault(problems[value], []).append(label)
    return [f"{', '.join(labels)}: n/a, {reason}" for reason, labels in by_reason.items()]


def estimate(params: int, bytes_per_param: float) -> int:
    """Memory to run a model: weights at the precision plus an overhead."""
    return bytes_needed(params, bytes_per_param)


def request_for(name: str, precision: str, cuda: bool = False) -> LoadRequest:
    """What loads ``name`` at a picker precision (``16bit``: fp16 on a GPU, bf16 on a CPU)."""
    if precision in QUANTISED:
        return LoadRequest(model=name, quant=precision)
    if precision == "16bit":
        return LoadRequest(model=name, dtype="fp16" if cuda else "bf16")
    if precision == "fp32":
        return LoadRequest(model=name, dtype=precision)
    return LoadRequest(model=name)


@dataclass
class Row:
    name: str
    label: str
    state: str
    size: int
    params: int
    spec: Any
    note: str = ""
    architecture: str = ""
    problems: dict[str, str] = field(default_factory=dict)  # precision -> why it cannot run here


class CatalogScanned(Message):
    def __init__(self, rows: list[Row], error: str | None, typed_problems: dict[str, str] | None = None) -> None:
        super().__init__()
        self.rows = rows
        self.error = error
        self.typed_problems = typed_problems or {}


class DownloadProgressed(Message):
    def __init__(self, name: str, progress: Any) -> None:
        super().__init__()
        self.name = name
        self.progress = progress


class DownloadEnded(Message):
    def __init__(self, name: str, error: BaseException | None, cancelled: bool) -> None:
        super().__init__()
        self.name = name
        self.error = error
        self.cancelled = cancelled


def scan_catalog() -> list[Row]:
    from ... import catalog

    specs = catalog.catalog()
    try:
        from ... import hub
    except Exception:
        hub = None
    rows = []
    for spec in specs.values():
        state, size = "unknown", spec.download_size
        if hub is not None:
            try:
                cached = hub.cached_state(spec)
                if spec.head_format == "gguf-package":
                    state = "packaged" if cached.complete else "not installed"
                    size = cached.size_on_disk or size
                elif cached.complete:
                    state = "cached"
                    size = cached.size_on_disk or size
                elif cached.size_on_disk:
                    state = "partial"
                else:
                    state = "not downloaded"
            except Exception as exc:
                state = f"error: {exc}"
        rows.append(Row(spec.name, spec.label, state, size, spec.params, spec, spec.note, spec.architecture))
    return rows


def hf_offline_mode() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


class ModelsScreen(ModalScreen[LoadRequest | None]):
    """Dismisses with a LoadRequest for the chosen model and precision, or None."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Close", id="models.close"),
        Binding("enter", "load", "Load", id="models.load", priority=True),
        Binding("d", "download", "Download", id="models.download"),
        Binding("c", "cancel_download", "Cancel download", id="models.cancel_download"),
    ]

    def __init__(self, current: str | None = None) -> None:
        super().__init__(id="models")
        self.current = current
        self.rows: dict[str, Row] = {}
        self.downloading: str | None = None
        self.cancel = threading.Event()
        self.memory = 0
        self.cuda = False
        self.typed_problems: dict[str, str] = {}  # for a typed model (architecture unknown until it loads)
        self._scanned_rows: list[Row] = []
        self._checked_text: str | None = None  # the typed model the message is about
        self._narrow: bool | None = None

    @property
    def chat_app(self) -> MedusaChatApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        with Vertical(id="models-dialog"):
            yield Static("Models", id="models-title")
            yield DataTable(id="models-table", cursor_type="row", zebra_stripes=True)
            yield Static("", id="model-detail")
            with Vertical(id="download-panel"):
                yield Static("", id="download-label")
                yield ProgressBar(id="download-bar", show_eta=False)
            yield Static("Scanning the catalogue…", id="models-summary")
            yield Input(placeholder="…or type a Hub repo id (org/name) or a local model directory, then Enter",
                        id="model-id")
            yield Static("", id="models-message")
            with Horizontal(id="models-actions"):
                yield Select([(label, value) for label, value, _ in PRECISIONS], value="auto", allow_blank=False,
                             id="precision")
                yield Button("Load", id="load", variant="primary")
                yield Button("Download", id="download")
                yield Button("Cancel download", id="cancel-download", disabled=True)
        yield Footer()

    def on_mount(self) -> None:
        self._scan()
        self.query_one(DataTable).focus()

    @property
    def narrow(self) -> bool:
        return self.app.size.width < NARROW

    def on_resize(self, event: events.Resize) -> None:
        if self._narrow is not None and self._narrow != self.narrow and self.rows:
            self._fill_table()

    @work(thread=True, group="catalog", exclusive=True, exit_on_error=False)
    def _scan(self) -> None:
        try:
            self.memory = machine_memory()
            self.cuda = machine_has_cuda()
            rows = scan_catalog()
            for row in rows:
                row.problems = precision_problems(row.architecture, self.cuda)
            self.post_message(CatalogScanned(rows, None, precision_problems("", self.cuda)))
        except Exception as exc:
            self.post_message(CatalogScanned([], f"Catalogue unavailable: {exc}"))

    def _memory_cell(self, row: Row, precision: str, bytes_per_param: float) -> str:
        if precision in row.problems:
            return "n/a"
        params = row.params
        if not params:
            return "–"
        need = estimate(params, bytes_per_param)
        size = human_bytes(need)
        if self.narrow:
            size = size.replace(" ", "").removesuffix("B")  # 4.8G
        fits = "" if not self.memory else ("✓" if need <= self.memory else "✗")
        return f"{size}{'' if self.narrow else ' '}{fits}".rstrip()

    def _fill_table(self) -> None:
        """(Re)build the table for the current width; the cursor stays on the same model."""
        narrow = self._narrow = self.narrow
        table = self.query_one(DataTable)
        keep = self.selected()
        table.clear(columns=True)
        self.set_class(narrow, "-narrow")
        table.add_column("model", key="model", width=18 if narrow else None)
        table.add_column("state", key="state", width=7 if narrow else None)
        if not narrow:
            table.add_column("size", key="size")
        for label, _, _ in PRECISIONS[1:]:
            table.add_column(label, key=label)
        for row in self._scanned_rows:
            state = "downloading" if row.name == self.downloading else row.state
            label = row.name + (" (loaded)" if row.name == self.current else "")
            if narrow:
                label = label if len(label) <= 18 else label[:17] + "…"
                state = SHORT_STATES.get(state, state[:7])
            cells = [label, state] + ([] if narrow else [human_bytes(row.size) if row.size > 0 else "–"])
            cells += [self._memory_cell(row, value, b) for _, value, b in PRECISIONS[1:]]
            table.add_row(*cells, key=row.name)
        if keep is not None and keep.name in self.rows:
            table.move_cursor(row=table.get_row_index(keep.name))
        self.query_one("#cancel-download", Button).label = "Cancel" if narrow else "Cancel download"
        self.refresh(layout=True)

    @on(CatalogScanned)
    def _scanned(self, message: CatalogScanned) -> None:
        self._scanned_rows = list(message.rows)
        self.rows = {r.name: r for r in message.rows}
        self.typed_problems = message.typed_problems
        self._fill_table()
        memory = f"available here: {human_bytes(self.memory)}" if self.memory else "memory unknown"
        quant = "" if self.cuda else " · CPU: 4/8-bit for the Llama family (lean decoder), 16-bit as bf16"
        if self.narrow:
            summary = f"{len(message.rows)} models · ✓ fits / ✗ not in {human_bytes(self.memory) or '?'}{quant}"
        else:
            summary = (
                f"{len(message.rows)} models · memory per precision (✓ fits, ✗ does not; {memory}){quant} · "
                "Enter loads · d downloads · c cancels"
            )
        self.query_one("#models-summary", Static).update(summary)
        if message.error:
            self._message(message.error, error=True)
        self._show_detail()

    def selected(self) -> Row | None:
        table = self.query_one(DataTable)
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return self.rows.get(str(key))

    @on(DataTable.RowHighlighted)
    def _show_detail(self) -> None:
        row = self.selected()
        lines = [row.label, row.note, *unavailable(row.problems)] if row else []
        self.query_one("#model-detail", Static).update("\n".join(line for line in lines if line))

    @on(DataTable.RowSelected)
    def _row_selected(self) -> None:
        self.action_load()

    @on(Button.Pressed, "#load")
    def _load_pressed(self) -> None:
        self.action_load()

    @on(Button.Pressed, "#download")
    def _download_pressed(self) -> None:
        self.action_download()

    @on(Button.Pressed, "#cancel-download")
    def _cancel_pressed(self) -> None:
        self.action_cancel_download()

    @on(Input.Changed, "#model-id")
    def _typing(self, event: Input.Changed) -> None:
        """Editing clears the message, unless it is about this very text (a change event may arrive after it)."""
        if event.value != self._checked_text:
            self._message("")

    def _precision(self, name: str, problems: dict[str, str]) -> str | None:
        """The chosen precision, or None (with a message) when this machine cannot run it for model ``name``."""
        precision = str(self.query_one("#precision", Select).value)
        if precision in problems:
            self._message(f"{precision} cannot run {name} here: {problems[precision]}. Pick auto, 16-bit or fp32.",
                          error=True)
            return None
        return precision

    def load_typed(self) -> None:
        """Load what was typed: an existing local model directory or a Hub repo id."""
        text = self._checked_text = self.query_one("#model-id", Input).value
        model, problem = parse_model_id(text)
        if model is None:
            self._message(problem, error=True)
            return
        precision = self._precision(model, self.typed_problems)
        if precision is not None:
            self.dismiss(request_for(model, precision, self.cuda))

    def action_load(self) -> None:
        if self.focused is self.query_one("#model-id", Input):
            self.load_typed()
            return
        row = self.selected()
        if row is None:
            return
        if row.state in ("not downloaded", "partial"):
            self._message(f"{row.name} is not downloaded yet: press d to download it first.", error=True)
            return
        if row.state == "not installed":
            self._message(f"{row.name} ships in a Python package that is not installed: {row.note}", error=True)
            return
        precision = self._precision(row.name, row.problems)
        if precision is not None:
            self.dismiss(request_for(row.name, precision, self.cuda))

    def action_close(self) -> None:
        if self.downloading:
            self.cancel.set()
        self.dismiss(None)

    def _message(self, text: str, *, error: bool = False) -> None:
        msg = self.query_one("#models-message", Static)
        msg.update(text)
        msg.set_class(error, "-error")

    def action_download(self) -> None:
        row = self.selected()
        if row is None:
            return
        if self.downloading:
            self._message(f"Already downloading {self.downloading}.", error=True)
            return
        if row.state in ("cached", "packaged"):
            self._message(f"{row.name} is already available.")
            return
        self.downloading = row.name
        self.cancel = threading.Event()
        self.query_one("#download-panel").add_class("-active")
        self.query_one("#download-label", Static).update(f"Downloading {row.name}: connecting…")
        self.query_one("#download-bar", ProgressBar).update(total=None, progress=0)
        self.query_one("#cancel-download", Button).disabled = False
        self._download(row.name, row.spec, self.cancel)

    def action_cancel_download(self) -> None:
        if self.downloading:
            self.cancel.set()
            self.query_one("#download-label", Static).update(f"Cancelling {self.downloading}…")

    @work(thread=True, group="download", exit_on_error=False)
    def _download(self, name: str, spec: Any, cancel: threading.Event) -> None:
        try:
            from ... import hub

            hub.download(spec, progress=lambda p: self.post_message(DownloadProgressed(name, p)), cancel=cancel)
            self.post_message(DownloadEnded(name, None, False))
        except Exception as exc:
            cancelled = type(exc).__name__ == "DownloadCancelled" or cancel.is_set()
            self.post_message(DownloadEnded(name, exc, cancelled))

    @on(DownloadProgressed)
    def _progressed(self, message: DownloadProgressed) -> None:
        p = message.progress
        self.query_one("#download-bar", ProgressBar).update(total=p.total or None, progress=p.downloaded)
        self.query_one("#download-label", Static).update(
            f"{message.name}: {human_bytes(p.downloaded)} / {human_bytes(p.total)} · {human_bytes(p.rate)}/s · "
            f"ETA {human_duration(p.eta)} · {p.filename}"
        )

    def download_failure(self, name: str, error: BaseException) -> str:
        """Why a download failed, and what is usable now (the packaged default counts)."""
        offline = type(error).__name__ in ("OfflineError", "LocalEntryNotFoundError", "OfflineModeIsEnabled")
        if not offline:
            return f"Download of {name} failed: {describe_error(error)}"
        if hf_offline_mode():
            why = "offline mode is on (HF_HUB_OFFLINE is set): unset it to download"
        else:
            why = "the Hub cannot be reached (no network?)"
        usable = [r.name for r in self._scanned_rows if r.state in ("cached", "packaged")]
        have = ", ".join(usable) if usable else "none"
        return f"Download of {name} failed: {why}. Usable offline now: {have}."

    @on(DownloadEnded)
    def _ended(self, message: DownloadEnded) -> None:
        self.downloading = None
        self.query_one("#cancel-download", Button).disabled = True
        if message.cancelled:
            self.query_one("#download-label", Static).update(f"{message.name}: cancelled (partial files kept)")
            self._message("Download cancelled; downloading again resumes.")
        elif message.error is not None:
            self.query_one("#download-panel").remove_class("-active")
            self._message(self.download_failure(message.name, message.error), error=True)
        else:
            self.query_one("#download-label", Static).update(f"{message.name}: downloaded")
            self._message(f"{message.name} is ready: press Enter to load it.")
        self._scan()
