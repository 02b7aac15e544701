"""How to generate: a plain dataclass, importable without torch (the TUI builds it on its own thread).

Each field carries its own range (``Bounds``) or choices in its metadata: ``GenerationConfig`` checks its
values with them when made (a bad one raises ValueError with a one-line message), and the settings file
and form read the same ranges.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

MAX_LOOKUP = 64
"""Longest prompt-lookup draft: each drafted token is one more slot in every verification pass."""

ACCEPTANCE_MODES = ("typical", "exact")


@dataclass(frozen=True)
class Bounds:
    """The numbers a field takes: ``kind`` from ``low`` to ``high`` (``low`` itself excluded when ``open_low``)."""

    kind: type
    low: float
    high: float
    text: str
    """The range in words, as messages and the settings form show it."""
    open_low: bool = False

    def contains(self, value: float) -> bool:
        return (self.low < value if self.open_low else self.low <= value) and value <= self.high


def _bounded(default: Any, bounds: Bounds, flag: str | None = None) -> Any:
    return field(default=default, metadata={"bounds": bounds, "flag": flag})


def _one_of(default: str, choices: tuple[str, ...]) -> Any:
    return field(default=default, metadata={"choices": choices})


@dataclass
class GenerationConfig:
    """How to generate. ``temperature == 0`` is greedy (and Medusa is then lossless).

    The field defaults are the engine's plain Medusa (what ``bench`` and ``tune`` measure); the app and
    ``generate`` start from :meth:`for_chat`.
    """

    max_new_tokens: int = _bounded(512, Bounds(int, 1, 2**20, "between 1 and 1048576"))
    temperature: float = _bounded(0.0, Bounds(float, 0.0, 2.0, "between 0 and 2 (0 = greedy)"))
    top_p: float = _bounded(1.0, Bounds(float, 0.0, 1.0, "in (0, 1] (1 = off)", open_low=True))
    medusa: bool = True
    posterior_threshold: float = _bounded(0.09, Bounds(float, 0.0, 1.0, "between 0 and 1"))
    posterior_alpha: float = _bounded(0.3, Bounds(float, 0.0, 1.0, "between 0 and 1"))
    stop_strings: Sequence[str] = ()
    seed: int | None = None
    acceptance: str = _one_of("typical", ACCEPTANCE_MODES)
    """With temperature > 0: "typical" (fast, approximate) or "exact" (the base model's own distribution)."""
    prompt_lookup: int = _bounded(0, Bounds(int, 0, MAX_LOOKUP, f"between 0 (off) and {MAX_LOOKUP}"), "--lookup")
    """Add a draft of up to this many tokens found by n-gram lookup in the context to each tree (0: off)."""
    auto_fallback: bool = False
    """Switch to plain decoding while it is measured to be faster than Medusa; re-probe now and then."""

    def __post_init__(self) -> None:
        problem = config_problem(self)
        if problem:
            raise ValueError(problem)

    @classmethod
    def for_chat(cls, **changes: Any) -> GenerationConfig:
        """The defaults of the app and ``generate``: prompt lookup of 10 tokens and automatic fallback on."""
        return cls(**{"prompt_lookup": 10, "auto_fallback": True, **changes})


FIELDS = {f.name: f for f in fields(GenerationConfig)}


def value_problem(name: str, value: object) -> str | None:
    """Why ``value`` cannot be field ``name`` (e.g. "must be between 0 and 1"), or None."""
    meta = FIELDS[name].metadata
    if bounds := meta.get("bounds"):
        if bounds.kind is int and (not isinstance(value, int) or isinstance(value, bool)):
            return "must be a whole number"
        if not _number(value):
            return "must be a finite number"
        if not bounds.contains(value):
            return f"must be {bounds.text}"
    elif (choices := meta.get("choices")) and value not in choices:
        return f"must be one of {', '.join(choices)}"
    elif isinstance(FIELDS[name].default, bool) and not isinstance(value, bool):
        return "must be true or false"
    return None


def config_problem(config: GenerationConfig) -> str | None:
    """Why ``config`` cannot be used (one line), or None."""
    for name, spec in FIELDS.items():
        value = getattr(config, name)
        if problem := value_problem(name, value):
            flag = spec.metadata.get("flag")
            return f"{name}{f' ({flag})' if flag else ''} {problem}, not {value!r}"
    return None


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
