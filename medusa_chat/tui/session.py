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

QUANTS = ("none", "4bit", "8bit")
DTYPES = ("auto", "fp32", "bf16", "fp16")
TREE_WORDS = ("auto", "tuned")  # auto: the model's default; tuned: this machine's (checked when loading)


def check_tree(tree: str | None) -> str | None:
    """Why ``tree`` is not a tree name (None when it is), by the engine's own preset parser.

    Imports the engine's tree module (torch): call it from a worker thread or the CLI, not at app import.
    """
    if not tree or tree in TREE_WORDS:
        return None
    from ..engine.presets import preset
    from ..engine.tree import TreeError

    try:
        preset(tree)
    except TreeError as exc:
        return str(exc)
    return None


def check_options(*, quant: str | None = None, dtype: str | None = None) -> str | None:
    """Why a precision option is invalid (None when both are fine); needs no torch."""
    if quant and quant not in QUANTS:
        return f"unknown --quant {quant!r}; choose one of: {', '.join(QUANTS)}"
    if dtype and dtype not in DTYPES:
        return f"unknown --dtype {dtype!r}; choose one of: {', '.join(DTYPES)}"
    return None


class OptionError(ValueError):
    """A bad option, found before the model loads."""


def check_request(request: LoadRequest) -> None:
    """Raise :class:`OptionError` for a bad tree, precision or dtype (before any weight is read)."""
    problem = check_options(quant=request.quant, dtype=request.dtype) or check_tree(request.tree)
    if problem:
        raise OptionError(problem)


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


def plural(n: int, word: str) -> str:
    """``1 token``, ``2 tokens``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


SPEEDUP_SLACK = 1.05  # measured speedup may exceed tokens/step by timing noise only


@dataclass
class Gauges:
    """Figures of one generation: pure maths over its step events, then over its final stats.

    Every figure (steps, tokens, tokens/s, tokens/step, speedup) comes from the same counters, so the
    gauge bar and the answer's line agree. A step that emits no token (the text flushed at the end) is
    not a step. ``medusa`` is what the engine actually did once the answer ends (no heads: plain).
    """

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
    fallback_steps: int = 0

    def add(self, event: StepEvent) -> None:
        self.decode_time += max(event.step_time, 0.0)
        if event.accepted <= 0:
            return
        self.fallback = event.fallback
        self.fallback_steps += bool(event.fallback)
        self.steps += 1
        self.tokens += event.accepted
        self.head_tokens += sum(1 for h in event.from_heads if h)
        self.current = event.accepted
        self.recent.append(event.accepted)

    def finish(self, stats: GenerationStats) -> None:
        """Adopt the engine's own totals (the same counters the events summed to)."""
        self.final = stats
        self.medusa = bool(stats.medusa)
        self.steps = stats.steps
        self.tokens = stats.new_tokens
        self.decode_time = stats.decode_time
        self.fallback_steps = min(int(getattr(stats, "fallback_steps", 0) or 0), stats.steps)

    @property
    def mode(self) -> str:
        """plain | medusa | fallback (every step plain by automatic fallback) | mixed (some steps)."""
        if not self.medusa:
            return "plain"
        if self.fallback_steps and self.fallback_steps >= self.steps:
            return "fallback"
        return "mixed" if self.fallback_steps else "medusa"

    @property
    def mean_accepted(self) -> float:
        return self.tokens / self.steps if self.steps else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.decode_time if self.decode_time > 0 else 0.0

    @property
    def raw_speedup(self) -> float | None:
        """This answer's tokens/s over the measured plain tokens/s; None for plain answers."""
        if self.mode in ("plain", "fallback") or not self.baseline_tps or self.tokens_per_s <= 0:
            return None
        return self.tokens_per_s / self.baseline_tps

    @property
    def stale_baseline(self) -> bool:
        """The plain speed cannot be right: a step never costs less than a plain step, so the speedup
        cannot exceed the tokens per step (the machine was busier when plain speed was measured)."""
        raw = self.raw_speedup
        return raw is not None and raw > max(self.mean_accepted, 1.0) * SPEEDUP_SLACK

    @property
    def speedup(self) -> float | None:
        """The measured speedup, when it is consistent with the other figures."""
        return None if self.stale_baseline else self.raw_speedup

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "medusa": self.medusa,
            "steps": self.steps,
            "new_tokens": self.tokens,
            "mean_accepted": round(self.mean_accepted, 4),
            "tokens_per_s": round(self.tokens_per_s, 3),
            "recent": list(self.recent),
        }
        if self.fallback_steps:
            out["fallback_steps"] = self.fallback_steps
        if self.speedup is not None:
            out["speedup"] = round(self.speedup, 4)
        if self.baseline_tps:
            out["baseline_tps"] = round(self.baseline_tps, 3)
        if self.stale_baseline:
            out["stale_baseline"] = True
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
        g.fallback_steps = int(data.get("fallback_steps", 0))
        g.recent.extend(int(x) for x in data.get("recent", []))
        g.current = g.recent[-1] if g.recent else 0
        tps = float(data.get("tokens_per_s", 0.0) or 0.0)
        if "decode_time" in data and float(data["decode_time"] or 0) > 0:
            g.decode_time = float(data["decode_time"])
        else:
            g.decode_time = g.tokens / tps if tps > 0 else 0.0
        if data.get("baseline_tps"):
            g.baseline_tps = float(data["baseline_tps"])
        elif data.get("speedup") and tps > 0:
            g.baseline_tps = tps / float(data["speedup"])
        return g


def summary_lines(stats: dict[str, Any]) -> list[str]:
    """An answer's figures: one line of numbers, and a line of its own for a fallback answer."""
    if not stats or "new_tokens" not in stats:
        return []
    g = Gauges.from_dict(stats)
    parts = [plural(g.tokens, "token"), plural(g.steps, "step")]
    if g.steps:
        parts.append(f"{g.mean_accepted:.2f} tok/step")
    if g.tokens_per_s > 0:
        parts.append(f"{g.tokens_per_s:.1f} tok/s")
    if g.speedup is not None:
        parts.append(f"{g.speedup:.2f}× plain")
    elif stats.get("stale_baseline"):
        parts.append("speedup ? (plain speed stale)")
    parts.append({"plain": "Medusa off", "fallback": "decoded plainly", "mixed": "Medusa on",
                  "medusa": "Medusa on"}[g.mode])
    lines = [" · ".join(parts)]
    if g.mode in ("fallback", "mixed"):
        lines.append(
            f"↳ automatic fallback: {g.fallback_steps} of {plural(g.steps, 'step')} decoded plainly "
            "(plain measured faster here)"
        )
    return lines


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
