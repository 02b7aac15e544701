"""Plain dataclasses the engine emits: what the TUI, the CLI and the benchmarks consume."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class StepEvent:
    """One decoding step: the tokens it emitted and what it cost.

    ``accepted`` counts every token the step emitted (the base model's own token plus those
    accepted from the heads), so a plain step has ``accepted == 1``. ``from_heads[i]`` says
    whether ``token_ids[i]`` was drafted (by a Medusa head or prompt lookup) rather than the base
    model's own choice.
    """

    token_ids: list[int]
    text: str
    accepted: int
    tree_size: int
    step_time: float
    from_heads: list[bool] = field(default_factory=list)
    fallback: bool = False  # a plain step chosen by automatic fallback (Medusa measured slower)


@dataclass(frozen=True)
class GenerationStats:
    """Summary of one generation; the last item ``Generator.stream`` yields."""

    new_tokens: int
    steps: int
    prefill_time: float
    decode_time: float
    prompt_tokens: int
    reused_tokens: int
    stop_reason: str  # "eos" | "max_new_tokens" | "stop_string" | "context" | "cancelled"
    medusa: bool
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    fallback_steps: int = 0

    @property
    def mean_accepted(self) -> float:
        """Mean tokens emitted per decoding step (1.0 for plain decoding)."""
        return self.new_tokens / self.steps if self.steps else 0.0

    @property
    def tokens_per_s(self) -> float:
        """Decoding speed, prefill excluded."""
        return self.new_tokens / self.decode_time if self.decode_time > 0 else 0.0

    @property
    def step_time(self) -> float:
        """Mean wall time of one decoding step."""
        return self.decode_time / self.steps if self.steps else 0.0
