"""The TUI's seam to the engine: what it needs of a loaded model (Protocols), what to load, and the loader.

Nothing here imports torch at module import time: the real factory imports ``medusa_chat.loading``
inside the load worker thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..engine.config import GenerationConfig
from ..engine.events import GenerationStats, StepEvent
from ..errors import UserError
from ..options import check_options
from ..trees import TreeChoice


class GeneratorLike(Protocol):
    """What the TUI needs from ``medusa_chat.engine.generator.Generator``."""

    tree_name: str

    @property
    def has_heads(self) -> bool: ...

    def set_tree(self, tree: str | Sequence[Sequence[int]], name: str | None = None) -> None: ...

    def stream(
        self, input_ids: list[int], config: GenerationConfig, cancel: threading.Event | None = None
    ) -> Iterator[StepEvent | GenerationStats]: ...

    def generate(
        self, input_ids: list[int], config: GenerationConfig, cancel: threading.Event | None = None
    ) -> GenerationStats: ...


class LoadedLike(Protocol):
    """What the TUI needs from ``medusa_chat.loading.LoadedModel``."""

    name: str
    generator: GeneratorLike
    tokenizer: Any
    device: str
    dtype: str
    quant: str
    engine: str
    stop_strings: tuple[str, ...]
    notes: list[str]
    auto_tree: TreeChoice | None

    @property
    def num_heads(self) -> int: ...

    @property
    def default_tree(self) -> str | None: ...

    def chat_ids(self, messages: list[dict[str, str]]) -> list[int]: ...

    def calibrate(self) -> float: ...

    def unload(self) -> None: ...


@dataclass(frozen=True)
class LoadRequest:
    """What to load. ``dtype``: auto | fp32 | bf16 | fp16; ``quant``: none | 4bit | 8bit; ``threads``: CPU threads."""

    model: str
    quant: str | None = None
    tree: str | None = None
    dtype: str | None = None
    device: str | None = None
    heads: str | None = None
    threads: int | None = None
    progress: Callable[[str], None] | None = field(default=None, compare=False, repr=False)


EngineFactory = Callable[[LoadRequest], LoadedLike]


def check_request(request: LoadRequest) -> None:
    """Raise :class:`~medusa_chat.options.OptionError` for a bad tree, precision, dtype or thread count."""
    check_options(quant=request.quant, dtype=request.dtype, tree=request.tree, threads=request.threads)


def default_engine_factory(request: LoadRequest) -> LoadedLike:
    """Load with the real loader (runs in a worker thread; imports torch lazily)."""
    from ..loading import load_model

    return load_model(
        request.model,
        heads=request.heads,
        dtype=request.dtype,
        device=request.device,
        quant=request.quant,
        tree=request.tree,
        threads=request.threads,
        progress=request.progress,
    )


def describe_error(exc: BaseException) -> str:
    """A short, actionable message for a load, download or generation failure."""
    name = type(exc).__name__
    text = str(exc).strip() or name
    if name == "GatedRepoError":
        return (
            "This repository is gated: accept its licence on huggingface.co and log in "
            "(`hf auth login` or HF_TOKEN), then try again."
        )
    if name in ("OfflineError", "LocalEntryNotFoundError", "OfflineModeIsEnabled") or "offline" in text.lower():
        return f"Offline and not in the cache: connect to the network or pick a cached model. ({text})"
    if name in ("RepositoryNotFoundError", "RepoNotFound", "RevisionNotFound"):
        return f"Repository not found on the Hub (or private): {text}"
    if isinstance(exc, UserError):
        return text
    if name in ("ConnectionError", "ConnectTimeout", "ReadTimeout", "TimeoutError"):
        return f"Network error: {text}"
    if name == "OutOfMemoryError" or "out of memory" in text.lower():
        return "Out of memory: try a smaller precision (4-bit/8-bit) or a smaller model."
    if isinstance(exc, ImportError):
        return f"A package is missing: {text}"
    return f"{name}: {text}"


def token_segments(tokenizer: Any, event: StepEvent) -> list[tuple[str, bool]]:
    """Split a step's text by token origin: (text, from_head) runs. Falls back to the whole step (no tokenizer)."""
    flags = list(event.from_heads) or [False] * len(event.token_ids)
    if not any(flags):
        return [(event.text, False)]
    if tokenizer is not None and len(flags) == len(event.token_ids):
        try:
            pieces: list[str] = []
            previous = ""
            for i in range(1, len(event.token_ids) + 1):
                text = tokenizer.decode(event.token_ids[:i], skip_special_tokens=True)
                pieces.append(text[len(previous) :] if text.startswith(previous) else text)
                previous = text
            if "".join(pieces) == event.text:
                runs: list[tuple[str, bool]] = []
                for piece, flag in zip(pieces, flags, strict=True):
                    if runs and runs[-1][1] == flag:
                        runs[-1] = (runs[-1][0] + piece, flag)
                    elif piece:
                        runs.append((piece, flag))
                return runs
        except Exception:
            pass
    return [(event.text, sum(flags) * 2 >= len(flags))]
