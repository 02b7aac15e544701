"""How to generate: a plain dataclass, importable without torch (the TUI builds it on its own thread).

Values are checked when the config is made: a bad one raises ValueError with a one-line message.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

MAX_LOOKUP = 64
"""Longest prompt-lookup draft: each drafted token is one more slot in every verification pass."""


@dataclass
class GenerationConfig:
    """How to generate. ``temperature == 0`` is greedy (and Medusa is then lossless)."""

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    medusa: bool = True
    posterior_threshold: float = 0.09
    posterior_alpha: float = 0.3
    stop_strings: Sequence[str] = ()
    seed: int | None = None
    acceptance: str = "typical"
    """With temperature > 0: "typical" (fast, approximate) or "exact" (the base model's own distribution)."""
    prompt_lookup: int = 0
    """Add a draft of up to this many tokens found by n-gram lookup in the context to each tree (0: off)."""
    auto_fallback: bool = False
    """Switch to plain decoding while it is measured to be faster than Medusa; re-probe now and then."""

    def __post_init__(self) -> None:
        problem = config_problem(self)
        if problem:
            raise ValueError(problem)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def config_problem(config: GenerationConfig) -> str | None:
    """Why ``config`` cannot be used (one line), or None."""
    if not isinstance(config.max_new_tokens, int) or isinstance(config.max_new_tokens, bool):
        return f"max_new_tokens must be a whole number, not {config.max_new_tokens!r}"
    if config.max_new_tokens < 1:
        return f"max_new_tokens must be at least 1, not {config.max_new_tokens}"
    if not _number(config.temperature) or config.temperature < 0:
        return f"temperature must be a number >= 0 (0 = greedy), not {config.temperature!r}"
    if not _number(config.top_p) or not 0 < config.top_p <= 1:
        return f"top_p must be in (0, 1] (1 = off), not {config.top_p!r}"
    for name in ("posterior_threshold", "posterior_alpha"):
        value = getattr(config, name)
        if not _number(value) or not 0 <= value <= 1:
            return f"{name} must be between 0 and 1, not {value!r}"
    if config.acceptance not in ACCEPTANCE_MODES:
        return f"acceptance must be one of {', '.join(ACCEPTANCE_MODES)}, not {config.acceptance!r}"
    lookup = config.prompt_lookup
    if not isinstance(lookup, int) or isinstance(lookup, bool) or not 0 <= lookup <= MAX_LOOKUP:
        return f"prompt_lookup (--lookup) must be between 0 (off) and {MAX_LOOKUP} tokens, not {lookup!r}"
    return None


ACCEPTANCE_MODES = ("typical", "exact")
