"""The TUI's seam to the engine: the engine factory, gauge maths and a scripted engine for tests.

Nothing here imports torch at module import time. The real factory imports ``medusa_chat.loading``
inside the load worker thread; the generation config class is imported inside the generation worker.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..engine.config import GenerationConfig
from ..engine.events import GenerationStats, StepEvent

SPARK_WINDOW = 48


class LoadedLike(Protocol):
    """What the TUI needs from ``medusa_chat.loading.LoadedModel``."""

    name: str
    generator: Any
    tokenizer: Any
    device: str
    dtype: str
    tree_name: str
    num_heads: int

    def chat_ids(self, messages: list[dict[str, str]]) -> list[int]: ...

    def calibrate(self) -> float: ...


@dataclass(frozen=True)
class LoadRequest:
    """What to load. ``dtype``: auto | fp32 | bf16 | fp16; ``quant``: none | 4bit | 8bit."""

    model: str
    quant: str | None = None
    tree: str | None = None
    dtype: str | None = None
    device: str | None = None
    heads: str | None = None
    progress: Callable[[str], None] | None = field(default=None, compare=False, repr=False)


EngineFactory = Callable[[LoadRequest], LoadedLike]


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
        progress=request.progress,
    )


def generation_config(loaded: Any, **kwargs: Any) -> GenerationConfig:
    """A ``GenerationConfig`` for ``loaded``, with its chat template's stop strings."""
    stop_strings = tuple(getattr(loaded, "stop_strings", ()) or ())
    if stop_strings and "stop_strings" not in kwargs:
        kwargs["stop_strings"] = stop_strings
    return GenerationConfig(**kwargs)


def is_context_error(exc: BaseException) -> bool:
    return type(exc).__name__ == "ContextLengthError"


# --- gauges ---------------------------------------------------------------------------------------


@dataclass
class Gauges:
    """Live figures of one generation: pure maths over the step events seen so far."""

    medusa: bool = True
    baseline_tps: float | None = None
    steps: int = 0
    tokens: int = 0
    head_tokens: int = 0
    decode_time: float = 0.0
    current: int = 0
    recent: deque[int] = field(default_factory=lambda: deque(maxlen=SPARK_WINDOW))
    final: GenerationStats | None = None
    fallback: bool = False  # the latest step was plain decoding chosen by automatic fallback

    def add(self, event: StepEvent) -> None:
        self.fallback = event.fallback
        self.steps += 1
        self.tokens += event.accepted
        self.head_tokens += sum(1 for h in event.from_heads if h)
        self.decode_time += max(event.step_time, 0.0)
        self.current = event.accepted
        self.recent.append(event.accepted)

    def finish(self, stats: GenerationStats) -> None:
        self.final = stats

    @property
    def mean_accepted(self) -> float:
        if self.final is not None and self.final.steps:
            return self.final.mean_accepted
        return self.tokens / self.steps if self.steps else 0.0

    @property
    def tokens_per_s(self) -> float:
        if self.final is not None and self.final.decode_time > 0:
            return self.final.tokens_per_s
        return self.tokens / self.decode_time if self.decode_time > 0 else 0.0

    @property
    def speedup(self) -> float | None:
        """Measured speed over the measured plain speed of this model on this machine."""
        if not self.baseline_tps or self.tokens_per_s <= 0:
            return None
        return self.tokens_per_s / self.baseline_tps

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "medusa": self.medusa,
            "steps": self.final.steps if self.final else self.steps,
            "new_tokens": self.final.new_tokens if self.final else self.tokens,
            "mean_accepted": round(self.mean_accepted, 4),
            "tokens_per_s": round(self.tokens_per_s, 3),
            "recent": list(self.recent),
        }
        if self.speedup is not None:
            out["speedup"] = round(self.speedup, 4)
            out["baseline_tps"] = round(self.baseline_tps or 0.0, 3)
        if self.final is not None:
            out.update(
                prefill_time=round(self.final.prefill_time, 5),
                decode_time=round(self.final.decode_time, 5),
                prompt_tokens=self.final.prompt_tokens,
                reused_tokens=self.final.reused_tokens,
                stop_reason=self.final.stop_reason,
            )
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Gauges:
        g = cls(medusa=bool(data.get("medusa", True)))
        g.steps = int(data.get("steps", 0))
        g.tokens = int(data.get("new_tokens", 0))
        g.recent.extend(int(x) for x in data.get("recent", []))
        g.current = g.recent[-1] if g.recent else 0
        tps = float(data.get("tokens_per_s", 0.0) or 0.0)
        g.decode_time = g.tokens / tps if tps > 0 else 0.0
        if data.get("baseline_tps"):
            g.baseline_tps = float(data["baseline_tps"])
        return g


def sparkline(values: list[int] | deque[int], width: int = 24) -> str:
    """A text sparkline of accepted tokens per step (1 = plain step)."""
    bars = "▁▂▃▄▅▆▇█"
    data = list(values)[-width:]
    if not data:
        return ""
    top = max(max(data), 2)
    return "".join(bars[min(len(bars) - 1, round((v - 1) / (top - 1) * (len(bars) - 1)))] for v in data)


# --- a scripted, deterministic engine (snapshot tests, demos) --------------------------------------


DEFAULT_SCRIPT = (
    "Medusa adds a few extra **decoding heads** to the model. Each head guesses a token further ahead, "
    "and one forward pass checks all the guesses at once.\n\n```python\ndef fib(n):\n    a, b = 0, 1\n"
    "    for _ in range(n):\n        a, b = b, a + b\n    return a\n```\n\nUnder greedy decoding the output "
    "is identical to plain decoding, just faster."
)


class ScriptedGenerator:
    """Yields a fixed answer in fixed-size steps with fixed step times: fully deterministic.

    ``gate``: when given, the generator waits on it before each step after ``release`` steps (tests
    use it to freeze a stream mid-way). ``cancel`` stops it at the next step, like the real engine.
    """

    def __init__(self, text: str = DEFAULT_SCRIPT, pattern: tuple[int, ...] = (3, 1, 2, 4, 2, 3)) -> None:
        self.text = text
        self.pattern = pattern
        self.has_heads = True
        self.tree_name = "cpu_8"
        self.hold_after: int | None = None
        self.gate = threading.Event()
        self.step_delay = 0.0
        self.calls: list[tuple[list[int], Any]] = []

    def set_tree(self, name_or_choices: Any, name: str | None = None) -> None:
        self.tree_name = name or (name_or_choices if isinstance(name_or_choices, str) else "custom")

    def _tokens(self) -> list[str]:
        out, word = [], ""
        for ch in self.text:
            word += ch
            if ch in " \n":
                out.append(word)
                word = ""
        if word:
            out.append(word)
        return out

    def stream(
        self, input_ids: list[int], config: Any, cancel: threading.Event | None = None
    ) -> Iterator[StepEvent | GenerationStats]:
        self.calls.append((list(input_ids), config))
        pieces = self._tokens()[: config.max_new_tokens]
        medusa = bool(getattr(config, "medusa", True))
        pos = steps = 0
        decode = 0.0
        reason = "eos"
        while pos < len(pieces):
            if self.hold_after is not None and steps >= self.hold_after:
                while not self.gate.wait(0.02):
                    if cancel is not None and cancel.is_set():
                        break
            if cancel is not None and cancel.is_set():
                reason = "cancelled"
                break
            n = self.pattern[steps % len(self.pattern)] if medusa else 1
            chunk = pieces[pos : pos + n]
            step_time = 0.02 if medusa else 0.01
            if self.step_delay:
                time.sleep(self.step_delay)
            ids = list(range(pos, pos + len(chunk)))
            yield StepEvent(
                token_ids=ids,
                text="".join(chunk),
                accepted=len(chunk),
                tree_size=8 if medusa else 1,
                step_time=step_time,
                from_heads=[i > 0 for i in range(len(chunk))],
            )
            pos += len(chunk)
            steps += 1
            decode += step_time
        yield GenerationStats(
            new_tokens=pos,
            steps=steps,
            prefill_time=0.05,
            decode_time=decode,
            prompt_tokens=len(input_ids),
            reused_tokens=0,
            stop_reason=reason if reason == "cancelled" or pos < len(self._tokens()) else "eos",
            medusa=medusa,
            text="".join(pieces[:pos]),
            token_ids=list(range(pos)),
        )

    def generate(self, input_ids: list[int], config: Any, cancel: threading.Event | None = None) -> GenerationStats:
        last = None
        for item in self.stream(input_ids, config, cancel):
            last = item
        assert isinstance(last, GenerationStats)
        return last


@dataclass
class ScriptedModel:
    """A LoadedModel look-alike driving a :class:`ScriptedGenerator`."""

    name: str = "scripted-tiny"
    generator: ScriptedGenerator = field(default_factory=ScriptedGenerator)
    tokenizer: Any = None
    device: str = "cpu"
    dtype: str = "float32"
    tree_name: str = "cpu_8"
    num_heads: int = 3
    plain_tps: float = 50.0

    def chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        return [len(m["content"]) for m in messages]

    def calibrate(self) -> float:
        return self.plain_tps


def scripted_factory(model: ScriptedModel | None = None, delay: float = 0.0) -> EngineFactory:
    """A factory returning ``model`` (or a fresh scripted model named after the request)."""

    def factory(request: LoadRequest) -> LoadedLike:
        if delay:
            time.sleep(delay)
        return model if model is not None else ScriptedModel(name=request.model)

    return factory


def token_segments(loaded: Any, event: StepEvent) -> list[tuple[str, bool]]:
    """Split a step's text by token origin: (text, from_head) runs. Falls back to the whole step."""
    flags = list(event.from_heads) or [False] * len(event.token_ids)
    if not any(flags):
        return [(event.text, False)]
    tokenizer = getattr(loaded, "tokenizer", None)
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
