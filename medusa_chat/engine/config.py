"""How to generate: a plain dataclass, importable without torch (the TUI builds it on its own thread)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


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


ACCEPTANCE_MODES = ("typical", "exact")
