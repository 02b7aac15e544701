"""A scripted, deterministic engine for the TUI's tests: it implements the app's Protocols without torch."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from medusa_chat.engine.config import GenerationConfig
from medusa_chat.engine.events import GenerationStats, StepEvent
from medusa_chat.trees import TreeChoice
from medusa_chat.tui.session import EngineFactory, LoadedLike, LoadRequest

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
        self.tree: Any = None
        self.hold_after: int | None = None
        self.gate = threading.Event()
        self.step_delay = 0.0
        self.calls: list[tuple[list[int], Any]] = []

    def set_tree(self, tree: str | Sequence[Sequence[int]], name: str | None = None) -> None:
        self.tree = tree
        self.tree_name = name or (tree if isinstance(tree, str) else "custom")

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
        self, input_ids: list[int], config: GenerationConfig, cancel: threading.Event | None = None
    ) -> Iterator[StepEvent | GenerationStats]:
        self.calls.append((list(input_ids), config))
        pieces = self._tokens()[: config.max_new_tokens]
        medusa = config.medusa
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

    def generate(
        self, input_ids: list[int], config: GenerationConfig, cancel: threading.Event | None = None
    ) -> GenerationStats:
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
    dtype: str = "fp32"
    quant: str = "none"
    engine: str = "lean"
    auto_tree: TreeChoice | None = None
    num_heads: int = 3
    default_tree: str | None = None
    stop_strings: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)
    plain_tps: float = 50.0
    unloaded: bool = False

    def chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        return [len(m["content"]) for m in messages]

    def calibrate(self) -> float:
        return self.plain_tps

    def unload(self) -> None:
        self.unloaded = True


def scripted_factory(model: ScriptedModel | None = None, delay: float = 0.0) -> EngineFactory:
    """A factory returning ``model`` (or a fresh scripted model named after the request)."""

    def factory(request: LoadRequest) -> LoadedLike:
        if delay:
            time.sleep(delay)
        return model if model is not None else ScriptedModel(name=request.model)

    return factory


